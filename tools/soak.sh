#!/usr/bin/env bash
# Soak test of the sync daemon's memory: builds a small town, starts S3Proxy on loopback, runs the daemon
# through r2-sync-daemon.sh (so with the JVM options the scripts ship) at a short interval for SOAK_CYCLES
# cycles, changes the town between some cycles (a file, a dolt row, a git commit), and samples the daemon
# JVM's RSS (VmRSS of the java process, not of a shell) at least once per cycle. Prints first/min/max/last
# RSS, the kernel's peak (VmHWM) and the cycle count; exits 1 when the peak exceeds SOAK_MAX_RSS_MB or a
# cycle failed, 2 when the daemon died or stalled.
#
# Usage: SOAK_CYCLES=200 SOAK_INTERVAL=2s SOAK_MAX_RSS_MB=300 tools/soak.sh
#   SOAK_CYCLES        cycles to run (200)
#   SOAK_INTERVAL      R2_SYNC_INTERVAL of the daemon (2s)
#   SOAK_MAX_RSS_MB    the limit on the daemon JVM's peak RSS (300)
#   SOAK_CHANGE_EVERY  change the town after every Nth cycle (3); 0: never
#   SOAK_JAVA_TOOL_OPTIONS  extra JVM options for the daemon only (JAVA_TOOL_OPTIONS; options the script
#                      ships on its command line win over these), to try options before shipping them
#   SOAK_KEEP          set to keep the work dir (daemon log, rss.tsv) for a look afterwards
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/s3proxy.sh
source "$repo/tools/s3proxy.sh"

cycles="${SOAK_CYCLES:-200}"
interval="${SOAK_INTERVAL:-2s}"
max_rss_mb="${SOAK_MAX_RSS_MB:-300}"
change_every="${SOAK_CHANGE_EVERY:-3}"

s3_pid=""
daemon_pid=""
work=""

# say MESSAGE: a progress line on stderr.
say() {
  printf 'soak: %s\n' "$*" >&2
}

# build_town ROOT SCRATCH: a small real town: mayor/town.json, a dolt database hq with a table, rig alpha
# with a bare .repo.git and a worktree, a crew clone, settings and runtime files.
build_town() {
  local root="$1" scratch="$2" n
  mkdir -p "$root/mayor" "$root/settings" "$root/alpha/.runtime" "$root/.dolt-data/hq" "$scratch"
  echo '{"name":"soak"}' > "$root/mayor/town.json"
  echo '{"rigs":["alpha"]}' > "$root/mayor/rigs.json"
  echo '{"theme":"dark"}' > "$root/settings/config.json"
  echo '{"pool":["furiosa"]}' > "$root/alpha/.runtime/namepool-state.json"
  (cd "$root/.dolt-data/hq" && dolt init > /dev/null &&
    dolt sql -q "create table issues (id int primary key, title varchar(80));
      insert into issues values (1, 'first'), (2, 'second'), (3, 'third');" &&
    dolt add . > /dev/null && dolt commit -m "first issues" > /dev/null)
  git init -q --bare "$scratch/upstream.git"
  git clone -q "$scratch/upstream.git" "$scratch/work" 2> /dev/null
  for n in 1 2 3; do
    echo "version $n" > "$scratch/work/README"
    git -C "$scratch/work" add README
    git -C "$scratch/work" commit -q -m "commit $n"
  done
  git -C "$scratch/work" push -q origin HEAD:main
  git -C "$scratch/upstream.git" symbolic-ref HEAD refs/heads/main
  git clone -q --bare "file://$scratch/upstream.git" "$root/alpha/.repo.git"
  git -C "$root/alpha/.repo.git" worktree add -q "$root/alpha/refinery/rig" main 2> /dev/null
  git clone -q "file://$scratch/upstream.git" "$root/alpha/crew/max" 2> /dev/null
}

# change_town ROOT N: the Nth small change, rotating between a file, a dolt row and a git commit.
change_town() {
  local root="$1" n="$2"
  case $((n % 3)) in
    0) echo "note $n" >> "$root/settings/notes.txt" ;;
    1) (cd "$root/.dolt-data/hq" && dolt sql -q "insert into issues values ($((n + 100)), 'soak $n')" > /dev/null) ;;
    2) echo "edit $n" >> "$root/alpha/crew/max/README" &&
      git -C "$root/alpha/crew/max" commit -q -am "soak $n" ;;
  esac
}

# start_s3 DIR: S3Proxy (tools/s3proxy.sh) with a bucket "soak"; sets s3_pid and the R2_* env.
start_s3() {
  mkdir -p "$1/blobs/soak"
  s3proxy_start "$1" soak soak-secret -Xmx256m
  s3_pid=$S3PROXY_PID
  export R2_ENDPOINT="http://127.0.0.1:$S3PROXY_PORT" R2_ACCESS_KEY_ID=soak R2_SECRET_ACCESS_KEY=soak-secret R2_BUCKET=soak
}

# setup_env DIR: tools on PATH, private git and dolt identities, and the daemon's R2_* settings under DIR.
setup_env() {
  local dir="$1"
  eval "$(bash "$repo/tools/install-tools.sh")"
  PATH="$(dirname "$DOLT_BIN"):$PATH"
  export PATH DOLT_ROOT_PATH="$dir/dolt-root" GIT_CONFIG_GLOBAL="$dir/gitconfig"
  mkdir -p "$DOLT_ROOT_PATH"
  git config --global user.name soak && git config --global user.email soak@example.invalid
  dolt config --global --add metrics.disabled true > /dev/null
  dolt config --global --add user.name soak > /dev/null
  dolt config --global --add user.email soak@example.invalid > /dev/null
  export TOWN_ID=soak GT_TOWN_ROOT="$dir/town" R2_WORK_DIR="$dir/sync-work" R2_STATE_DIR="$dir/state"
  export R2_SYNC_LOCK="$dir/r2-sync.lock" R2_NO_PROGRESS=1
}

# daemon_java PID: prints the pid of the daemon's JVM: PID itself or a descendant whose executable is java
# and which is not JBang's launcher JVM; prints nothing while there is none yet.
daemon_java() {
  local pid="$1" child
  if [[ "$(readlink "/proc/$pid/exe" 2> /dev/null)" == */java ]] &&
    ! tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null | grep -q 'dev\.jbang\.Main'; then
    echo "$pid"
    return 0
  fi
  for child in $(pgrep -P "$pid" 2> /dev/null || true); do
    daemon_java "$child" && return 0
  done
  return 1
}

# rss_kb PID FIELD: prints FIELD (VmRSS, VmHWM) of /proc/PID/status in KiB, or nothing.
rss_kb() {
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2> /dev/null || true
}

cleanup() {
  if [[ -n "$daemon_pid" ]]; then
    kill -TERM -- "-$daemon_pid" 2> /dev/null || kill -TERM "$daemon_pid" 2> /dev/null || true
    wait "$daemon_pid" 2> /dev/null || true
  fi
  if [[ -n "$s3_pid" ]]; then
    kill "$s3_pid" 2> /dev/null || true
    wait "$s3_pid" 2> /dev/null || true
  fi
  if [[ -n "$work" ]]; then
    if [[ -n "${SOAK_KEEP:-}" ]]; then
      say "kept $work (daemon.log, rss.tsv)"
    else
      rm -rf "$work"
    fi
  fi
}

_main() {
  work="$(mktemp -d "${TMPDIR:-/tmp}/gastown-r2-soak.XXXXXX")"
  trap cleanup EXIT
  setup_env "$work"
  say "building a small town in $work/town"
  build_town "$work/town" "$work/scratch"
  start_s3 "$work/s3"

  local log="$work/daemon.log" tsv="$work/rss.tsv"
  say "daemon every $interval for $cycles cycles (log $log)"
  # setsid: the daemon and whatever it starts (dolt, git) get a process group of their own for cleanup.
  local -a env=(R2_SYNC_INTERVAL="$interval")
  [[ -z "${SOAK_JAVA_TOOL_OPTIONS:-}" ]] || env+=(JAVA_TOOL_OPTIONS="$SOAK_JAVA_TOOL_OPTIONS")
  env "${env[@]}" setsid "$repo/r2-sync-daemon.sh" > "$log" 2>&1 &
  daemon_pid=$!

  local java="" done_cycles=0 ok=0 failed=0 seen=0 changes=0 rss hwm="" opts
  local first="" min="" max=0 last="" start=$SECONDS stall_limit
  stall_limit=$((120 + 10 * ${interval%%[!0-9]*}))
  printf 'cycle\trss_kb\n' > "$tsv"
  while ((done_cycles < cycles)); do
    if ! kill -0 "$daemon_pid" 2> /dev/null; then
      say "the daemon exited after $done_cycles cycles; the end of its log:"
      tail -n 20 "$log" >&2
      exit 2
    fi
    [[ -n "$java" ]] || java="$(daemon_java "$daemon_pid" || true)"
    ok=$(grep -c -E '^.*sync [0-9TZ]+: (ok|partial) in ' "$log" || true)
    failed=$(grep -c 'daemon: cycle failed' "$log" || true)
    done_cycles=$((ok + failed))
    # RSS counts from the end of the first cycle on (before it the JVM is still starting); the
    # kernel's peak (VmHWM) covers the whole run.
    if [[ -n "$java" ]] && ((done_cycles > 0)); then
      rss="$(rss_kb "$java" VmRSS)"
      if [[ -n "$rss" ]]; then
        hwm="$(rss_kb "$java" VmHWM)"
        [[ -n "$first" ]] || first=$rss
        [[ -n "$min" && "$min" -le "$rss" ]] || min=$rss
        ((rss <= max)) || max=$rss
        last=$rss
      fi
    fi
    if ((done_cycles > seen)); then
      seen=$done_cycles
      printf '%s\t%s\n' "$done_cycles" "${last:-}" >> "$tsv"
      if ((done_cycles % 20 == 0)); then
        say "cycle $done_cycles: RSS $((${last:-0} / 1024)) MiB (peak $((${hwm:-0} / 1024)) MiB), $failed failed"
      fi
      if ((change_every > 0 && done_cycles % change_every == 0 && done_cycles < cycles)); then
        changes=$((changes + 1))
        change_town "$GT_TOWN_ROOT" "$changes" || say "change $changes failed (the town is busy?); going on"
      fi
      start=$SECONDS
    elif ((SECONDS - start > stall_limit)); then
      say "no cycle ended within ${stall_limit}s; the end of the daemon log:"
      tail -n 20 "$log" >&2
      exit 2
    fi
    sleep 0.5
  done

  opts="$(tr '\0' ' ' < "/proc/$java/cmdline" | grep -o -E -- '-X[^ ]+' | tr '\n' ' ' || true)"
  hwm="$(rss_kb "$java" VmHWM)"
  ((hwm >= max)) || hwm=$max
  echo "soak: $done_cycles cycles ($ok ok, $failed failed) every $interval, $changes town changes; daemon JVM pid $java"
  echo "soak: JVM -X options: ${opts:-none}${SOAK_JAVA_TOOL_OPTIONS:+ (JAVA_TOOL_OPTIONS: $SOAK_JAVA_TOOL_OPTIONS)}"
  printf 'soak: RSS MiB: first %d, min %d, max %d, last %d; peak (VmHWM) %d; limit %d\n' \
    "$((first / 1024))" "$((min / 1024))" "$((max / 1024))" "$((last / 1024))" "$((hwm / 1024))" "$max_rss_mb"
  if ((hwm > max_rss_mb * 1024)); then
    echo "soak: FAIL: peak RSS $((hwm / 1024)) MiB exceeds SOAK_MAX_RSS_MB=$max_rss_mb"
    exit 1
  fi
  if ((failed > 0)); then
    echo "soak: FAIL: $failed cycle(s) failed (see the daemon log; SOAK_KEEP=1 keeps it)"
    grep 'daemon: cycle failed' "$log" | head -n 3
    exit 1
  fi
  echo "soak: PASS"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _main "$@"
fi
