# shellcheck shell=bash
# r2-jbang.sh: sourced by r2-sync-daemon.sh and r2-restore.sh; runs one of this repo's scripts with JBang.
# JBang is $JBANG when set, else `jbang` on PATH, else the repo's own launcher (./jbang). The wrappers may
# be symlinks (e.g. /usr/local/bin/r2-restore.sh): the .java files are found next to the real file.

# Runs <script> (e.g. R2Sync.java) with every argument, in place of this process, so signals (SIGTERM)
# reach the JVM directly and its exit code is the caller's.
# Usage: r2_jbang_exec <wrapper-path> <script> [args...]
r2_jbang_exec() {
  local dir jbang
  dir="$(dirname -- "$(readlink -f -- "$1")")"
  shift
  if [[ -n "${JBANG:-}" ]]; then
    jbang="$JBANG"
  elif command -v jbang > /dev/null 2>&1; then
    jbang="$(command -v jbang)"
  else
    jbang="$dir/jbang"
  fi
  local script="$1"
  shift
  exec "$jbang" "$dir/$script" "$@"
}
