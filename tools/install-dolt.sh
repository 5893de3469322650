#!/usr/bin/env bash
# Installs the pinned dolt into the cache (built from the Go module proxy; a cold build takes minutes).
# Prints the path of the dolt binary. Idempotent: a second run returns at once.
set -euo pipefail
# shellcheck source=tools/versions.sh
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

dolt_bin="$DOLT_HOME/bin/dolt"
if [[ ! -x "$dolt_bin" ]]; then
  echo "install-dolt: building dolt $DOLT_VERSION ($DOLT_MODULE_VERSION) with go install; this takes a few minutes once" >&2
  mkdir -p "$DOLT_HOME"
  staging="$(mktemp -d "$DOLT_HOME/.build.XXXXXX")"
  # cgo is required (bundled zstd); ICU comes from Debian's libicu-dev, installed by install-tools.sh.
  GOBIN="$staging" CGO_ENABLED=1 GOFLAGS=-buildvcs=false \
    go install "github.com/dolthub/dolt/go/cmd/dolt@$DOLT_MODULE_VERSION"
  mkdir -p "$DOLT_HOME/bin"
  mv "$staging/dolt" "$dolt_bin"   # the rename is the "complete" marker: a half build is never used
  rmdir "$staging"
fi
echo "$dolt_bin"
