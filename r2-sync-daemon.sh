#!/usr/bin/env bash
# r2-sync-daemon.sh: backs up this Gas Town to R2 by running R2Sync.java with JBang.
#
#   r2-sync-daemon.sh               the daemon: a sync at start, then one every R2_SYNC_INTERVAL (5m);
#                                   SIGTERM ends it (a cycle in flight is abandoned, never published half);
#                                   SIGUSR1 makes it abandon a cycle in flight, sync once more and exit
#                                   with that sync's code (the SIGTERM flush of startup.sh)
#   r2-sync-daemon.sh --immediate   one sync now, then exit; waits for a sync already running (the
#                                   flush when no daemon runs)
#
# Every argument goes to R2Sync (`r2-sync-daemon.sh --help`), and R2Sync's exit code is this script's:
# 0 published, 1 failed, 2 usage or configuration, 3 published with parts missing. Configuration comes
# from the environment (R2_ENDPOINT, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_BUCKET, TOWN_ID,
# GT_TOWN_ROOT, GASTOWN_API_URL, GASTOWN_API_TOKEN, ...). The script may be a symlink (e.g.
# /usr/local/bin/r2-sync-daemon.sh): R2Sync.java is found next to the file it points to.
# JBang: $JBANG when set, else `jbang` on PATH, else the repo's own launcher (./jbang); see r2-jbang.sh.
set -Eeuo pipefail
# shellcheck source=r2-jbang.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/r2-jbang.sh"

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  r2_jbang_exec "${BASH_SOURCE[0]}" R2Sync.java "$@"
fi
