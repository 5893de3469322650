#!/usr/bin/env bash
# Installs the restics tools/bench.sh runs side by side with ours, and prints the path of one binary:
#   install-restic.sh [latest]  restic $RESTIC_VERSION (tools/versions.sh; 0.18.1), the newest that builds here:
#                               `go install github.com/restic/restic/cmd/restic@v$RESTIC_VERSION` from the Go module
#                               proxy into the cache ($RESTIC_HOME/bin/restic; a cold build takes a few minutes).
#                               RESTIC_LATEST_BIN names one to use instead.
#   install-restic.sh 0.14      Debian's package (0.14 on bookworm, /usr/bin/restic) through apt-get; installing
#                               needs root (otherwise it says what to do and fails). RESTIC_BIN names one to use
#                               instead.
# Idempotent: once a binary is there it only prints where it is.
set -euo pipefail
# shellcheck source=tools/versions.sh
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

which="${1:-latest}"
case "$which" in
  latest | "$RESTIC_VERSION")
    if [[ -n "${RESTIC_LATEST_BIN:-}" ]]; then
      [[ -x "$RESTIC_LATEST_BIN" ]] || { echo "install-restic: RESTIC_LATEST_BIN=$RESTIC_LATEST_BIN is not an executable" >&2; exit 1; }
      echo "$RESTIC_LATEST_BIN"
      exit 0
    fi
    restic_bin="$RESTIC_HOME/bin/restic"
    if [[ ! -x "$restic_bin" ]]; then
      echo "install-restic: building restic $RESTIC_VERSION with go install; this takes a few minutes once" >&2
      mkdir -p "$RESTIC_HOME"
      staging="$(mktemp -d "$RESTIC_HOME/.build.XXXXXX")"
      trap 'rm -rf "$staging"' EXIT
      GOBIN="$staging" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
        go install "github.com/restic/restic/cmd/restic@v$RESTIC_VERSION" >&2
      mkdir -p "$RESTIC_HOME/bin"
      mv "$staging/restic" "$restic_bin"   # the rename is the "complete" marker: a half build is never used
    fi
    echo "$restic_bin"
    ;;
  0.14 | debian)
    if [[ -n "${RESTIC_BIN:-}" ]]; then
      [[ -x "$RESTIC_BIN" ]] || { echo "install-restic: RESTIC_BIN=$RESTIC_BIN is not an executable" >&2; exit 1; }
      echo "$RESTIC_BIN"
      exit 0
    fi
    # The package's own path, not `command -v restic`: a newer restic earlier on PATH is not Debian's.
    if [[ ! -x /usr/bin/restic ]]; then
      if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get > /dev/null; then
        echo "install-restic: Debian's restic is not installed; install it (apt-get install restic) or set RESTIC_BIN" >&2
        exit 1
      fi
      echo "install-restic: apt-get install restic (once)" >&2
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >&2
    fi
    echo /usr/bin/restic
    ;;
  *)
    echo "usage: install-restic.sh [latest|$RESTIC_VERSION|0.14]" >&2
    exit 2
    ;;
esac
