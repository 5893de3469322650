#!/usr/bin/env bash
# r2-restore.sh: restores this Gas Town from R2 by running R2Restore.java with JBang.
#
#   r2-restore.sh                   restore onto an empty volume (run before `gt up`); a volume that
#                                   holds data is left as it is, and no backup yet is a normal start
#   r2-restore.sh --list            the snapshots in R2
#   r2-restore.sh --verify          a trial restore of the latest snapshot in a temp dir
#   r2-restore.sh --snapshot TS     that snapshot instead of the latest; --force: restore over data
#
# Every argument goes to R2Restore (`r2-restore.sh --help`), and R2Restore's exit code is this
# script's: 0 restored or nothing to do, 1 failed, 2 usage or configuration. Configuration comes from
# the environment (R2_ENDPOINT, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_BUCKET, TOWN_ID,
# GT_TOWN_ROOT, ...). The script may be a symlink (e.g. /usr/local/bin/r2-restore.sh): R2Restore.java
# is found next to the file it points to.
# JBang: $JBANG when set, else `jbang` on PATH, else the repo's own launcher (./jbang); see r2-jbang.sh.
set -Eeuo pipefail
# shellcheck source=r2-jbang.sh
source "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/r2-jbang.sh"

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  r2_jbang_exec "${BASH_SOURCE[0]}" R2Restore.java "$@"
fi
