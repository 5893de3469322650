#!/usr/bin/env bash
# Installs every tool the tests need into the project cache (outside the repo) and prints `export`
# lines for them, so callers can do: eval "$(bash tools/install-tools.sh)".
# Idempotent: each installer returns at once when its tool is already there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Debian packages, installed only when missing (apt-get update costs seconds, so not on every run).
# libicu-dev and g++: dolt is built from source with cgo and ICU regex. shellcheck: lints our scripts.
need_apt=()
command -v shellcheck > /dev/null || need_apt+=(shellcheck)
command -v g++ > /dev/null || need_apt+=(g++)
dpkg -s libicu-dev > /dev/null 2>&1 || need_apt+=(libicu-dev)
if ((${#need_apt[@]} > 0)); then
  echo "install-tools: apt-get install ${need_apt[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

bash "$here/install-jbang.sh" > /dev/null
dolt_bin="$(bash "$here/install-dolt.sh")"
s3proxy_jar="$(bash "$here/install-s3proxy.sh")"

printf 'export DOLT_BIN=%q\n' "$dolt_bin"
printf 'export S3PROXY_JAR=%q\n' "$s3proxy_jar"
