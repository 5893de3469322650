#!/usr/bin/env bash
# Installs every tool the tests need into the project cache (outside the repo) and prints `export`
# lines for them, so callers can do: eval "$(bash tools/install-tools.sh)".
# Idempotent and fast once done (about 20 ms): each step checks first and returns at once.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=tools/versions.sh
source "$here/versions.sh"

# Debian packages, only those missing (apt-get update costs seconds, so it runs only when needed).
# Always: shellcheck (lints our scripts). The build-only ones matter only while a tool is not cached yet:
# maven resolves JBang and S3Proxy from Maven Central; g++ and libicu-dev build dolt (cgo, ICU regex).
need_apt=()
command -v shellcheck > /dev/null || need_apt+=(shellcheck)
if [[ ! -d "$JBANG_HOME/lib" || ! -f "$S3PROXY_JAR" ]]; then
  command -v mvn > /dev/null || need_apt+=(maven)
fi
if [[ ! -x "$DOLT_HOME/bin/dolt" ]]; then
  command -v g++ > /dev/null || need_apt+=(g++)
  dpkg -s libicu-dev > /dev/null 2>&1 || need_apt+=(libicu-dev)
fi
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
