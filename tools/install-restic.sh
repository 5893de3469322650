#!/usr/bin/env bash
# Installs restic (the Debian package; 0.14 on bookworm) when it is missing, for tools/bench.sh's side-by-side
# runs, and prints the path of the binary. RESTIC_BIN names one to use instead. Idempotent: once restic is on
# PATH it only prints where it is. Installing needs root (apt-get); otherwise it says what to do and fails.
set -euo pipefail

if [[ -n "${RESTIC_BIN:-}" ]]; then
  [[ -x "$RESTIC_BIN" ]] || { echo "install-restic: RESTIC_BIN=$RESTIC_BIN is not an executable" >&2; exit 1; }
  echo "$RESTIC_BIN"
  exit 0
fi
if ! command -v restic > /dev/null; then
  if [[ "$(id -u)" -ne 0 ]] || ! command -v apt-get > /dev/null; then
    echo "install-restic: restic is not installed; install it (apt-get install restic) or set RESTIC_BIN" >&2
    exit 1
  fi
  echo "install-restic: apt-get install restic (once)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic >&2
fi
command -v restic
