#!/usr/bin/env bash
# Installs S3Proxy (org.gaul:s3proxy, pinned), a real S3-compatible server for tests and the demo,
# from Maven Central into the cache. Prints the jar's path. Idempotent.
set -euo pipefail
# shellcheck source=tools/versions.sh
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

if [[ ! -f "$S3PROXY_JAR" ]]; then
  echo "install-s3proxy: fetching org.gaul:s3proxy:$S3PROXY_VERSION from Maven Central (once)" >&2
  jar_dir="$(dirname "$S3PROXY_JAR")"
  mkdir -p "$jar_dir"
  staging="$(mktemp -d "$jar_dir/.fetch.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  mvn -q -B dependency:copy \
    -Dartifact="org.gaul:s3proxy:$S3PROXY_VERSION:jar:jar-with-dependencies" \
    -DoutputDirectory="$staging" >&2
  mv "$staging/$(basename "$S3PROXY_JAR")" "$S3PROXY_JAR"
fi
echo "$S3PROXY_JAR"
