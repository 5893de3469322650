#!/usr/bin/env bash
# startup.sh: the entry point of the Gas Town sandbox container (run it under tini).
#
#   1. restore the town from R2 (r2-restore.sh), before gt up; a volume that holds data is kept as it
#      is, and a failed restore is logged loudly but does not stop the container
#   2. gt up, without the backup's secrets in its environment (see below)
#   3. the R2 sync daemon (r2-sync-daemon.sh) in the background, restarted if it dies
#   4. wait for SIGTERM or SIGINT, then: a final sync of the town as it is now, by the running daemon
#      (SIGUSR1: it abandons a cycle in flight, never published half, syncs once more and exits; its JVM
#      is warm, so no second one starts) or, when the daemon is not running, by r2-sync-daemon.sh
#      --immediate; then gt down, stop COMMAND, exit 0. A second signal abandons the final sync.
#
# Usage: startup.sh [-- COMMAND [ARG...]]
#   COMMAND (optional) runs in the background after gt up, e.g. a web terminal, without the backup's
#   secrets (r2-restore.sh --list from a shell it opens needs them given again). When it exits on its
#   own, the container shuts down the same way and startup.sh exits with COMMAND's status.
#
# Environment: what r2-restore.sh and r2-sync-daemon.sh read (R2_ENDPOINT, R2_ACCESS_KEY_ID,
# R2_SECRET_ACCESS_KEY, R2_BUCKET, TOWN_ID, GT_TOWN_ROOT, GASTOWN_API_URL, GASTOWN_API_TOKEN, ...), and
#   R2_FLUSH_TIMEOUT   seconds the final sync may take before it is abandoned (default 120); keep it
#                      below the platform's kill timeout (Fly: kill_timeout), leaving time for gt down
# gt is found on PATH; without it the gt steps are skipped (and logged). Every line this script logs
# goes to stderr as "<UTC time> startup: <message>".
#
# The backup's secrets (SECRET_VARS below, and each one's NAME_FILE variant) reach the restore and the
# sync daemon only: gt up, gt down (and the agents they start) and COMMAND run without them in their
# environment. That keeps them out of what an agent prints, logs or hands to its tools; it is not a wall
# against an agent that goes looking. Under the same uid an agent can still read /proc/<pid>/environ of
# this script, of PID 1 and of the sync daemon's JVM, and any secret file the backup can read (a
# NAME_FILE path is hidden, the file is not). Keeping the secrets from the agents takes the image: the
# backup (this script, the restore and the daemon) under a uid of its own, with the secret files
# readable by that uid only, and gt and the agents under another.
set -Eeuo pipefail

# The backup's secrets: each variable whose value, or whose NAME_FILE variant's file, opens the bucket,
# the cloud API or the backups' content (R2Options in R2Common.java reads them, R2_ENCRYPTION_* with the
# encryption). A new secret is added here once; its NAME_FILE variant comes with it.
readonly SECRET_VARS=(R2_ACCESS_KEY_ID R2_SECRET_ACCESS_KEY R2_SESSION_TOKEN GASTOWN_API_TOKEN R2_ENCRYPTION_KEY R2_ENCRYPTION_KEYRING)

# --- state shared by the functions below -------------------------------------------------------
here=""                 # the directory of this script, symlinks resolved
phase="restore"         # restore | up | running | stopping
step_pid=""             # the startup step being waited for (restore, gt up)
daemon_pid=""           # the sync daemon, or the timer before its restart
daemon_state=""         # running | waiting (daemon_pid is a restart timer)
daemon_delay=10         # seconds before the next restart of a dead daemon (doubles, up to 300)
command_pid=""          # COMMAND, when given
flush_pid=""            # the final sync's process (the daemon, or a new one), while it runs
last_status=0           # the exit status wait_for saw
have_setsid=""          # non-empty when setsid(1) exists: children get process groups of their own
without_secrets=()      # env(1) and its -u options: runs a command without the backup's secrets (init_without_secrets)

# Prints one timestamped log line on stderr.
# Usage: log <message...>
log() {
  printf '%s startup: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$*" >&2
}

# Prints the directory this script really lives in, symlinks resolved.
script_dir() {
  dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")"
}

# Microseconds since the epoch (bash 5's EPOCHREALTIME), for durations.
now_us() {
  local t=${EPOCHREALTIME/[.,]/}
  printf '%s\n' "$((10#$t))"
}

# Prints a duration given in microseconds as seconds with one decimal, e.g. 12.3s.
# Usage: seconds_since <start-us>
seconds_since() {
  local us=$(($(now_us) - $1))
  printf '%d.%ds\n' "$((us / 1000000))" "$((us % 1000000 / 100000))"
}

# True when a process is still running.
# Usage: alive <pid>
alive() {
  [[ -n "$1" ]] && kill -0 "$1" 2> /dev/null
}

# Starts a command in the background, in a process group of its own when setsid exists (so that
# stop_child can sweep up whatever it leaves behind), and stores its pid in the variable named $1.
# Usage: spawn <var> <command> [arg...]
spawn() {
  local var=$1
  shift
  if [[ -n "$have_setsid" ]]; then
    setsid "$@" &
  else
    "$@" &
  fi
  printf -v "$var" '%s' "$!"
}

# Waits for a background child to exit and stores its exit status in last_status. A trapped signal
# runs its trap meanwhile (inside `wait`); the wait goes on if the trap returns.
# Usage: wait_for <pid>
wait_for() {
  last_status=0
  wait "$1" || last_status=$?
  while alive "$1"; do
    last_status=0
    wait "$1" || last_status=$?
  done
}

# Stops a child: SIGTERM, up to <grace> seconds to exit, then SIGKILL; then kills anything left in
# its process group (dolt, git or java it started). Prints nothing; the child is reaped.
# Usage: stop_child <pid> <name> [grace-seconds]
stop_child() {
  local pid=$1 name=$2 grace=${3:-30}
  [[ -n "$pid" ]] || return 0
  if alive "$pid"; then
    kill -TERM "$pid" 2> /dev/null || true
    local deadline=$((SECONDS + grace))
    while alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if alive "$pid"; then
      log "$name did not stop within ${grace}s of SIGTERM; killing it"
      kill -KILL "$pid" 2> /dev/null || true
    fi
  fi
  wait "$pid" 2> /dev/null || true
  if [[ -n "$have_setsid" ]]; then
    kill -KILL -- "-$pid" 2> /dev/null || true
  fi
}

# Sets without_secrets to an env(1) command that runs what follows it without SECRET_VARS and their
# NAME_FILE variants in its environment: "${without_secrets[@]}" gt up.
init_without_secrets() {
  local name
  without_secrets=(env)
  for name in "${SECRET_VARS[@]}"; do
    without_secrets+=(-u "$name" -u "${name}_FILE")
  done
}

# --- startup steps -------------------------------------------------------------------------------

# Restores the town from R2 when the volume is empty. A failure is logged loudly and startup goes on:
# the sync then refuses to overwrite the good backups until the restore is fixed.
restore_town() {
  local start status
  start=$(now_us)
  log "restoring town ${TOWN_ID:-<TOWN_ID unset>} into $GT_TOWN_ROOT from R2 (skipped when the volume holds data)"
  spawn step_pid "$here/r2-restore.sh"
  wait_for "$step_pid"
  status=$last_status
  step_pid=""
  case "$status" in
    0) log "restore step done in $(seconds_since "$start")" ;;
    2) log "ERROR: RESTORE NOT RUN: configuration error (exit 2, see the line above); the town starts WITHOUT" \
      "its R2 backup, and the sync cannot run either until the configuration is fixed" ;;
    *) log "ERROR: RESTORE FAILED (exit $status) after $(seconds_since "$start"); the town starts WITHOUT its R2" \
      "backup, and backups stay off until the restore is fixed (r2-restore.sh --list / --snapshot, see the lines above)" ;;
  esac
}

# Runs `gt <subcommand>` in the town root when gt is on PATH, without the backup's secrets; a failure is
# logged, never fatal.
# Usage: run_gt <subcommand>
run_gt() {
  local start status
  if ! command -v gt > /dev/null 2>&1; then
    log "gt not found on PATH; skipping gt $1"
    return 0
  fi
  start=$(now_us)
  log "gt $1"
  if [[ -d "$GT_TOWN_ROOT" ]]; then
    (cd "$GT_TOWN_ROOT" && exec "${without_secrets[@]}" gt "$1") &
  else
    "${without_secrets[@]}" gt "$1" &
  fi
  step_pid=$!
  wait_for "$step_pid"
  status=$last_status
  step_pid=""
  if ((status == 0)); then
    log "gt $1 done in $(seconds_since "$start")"
  else
    log "ERROR: gt $1 failed (exit $status) after $(seconds_since "$start")"
  fi
}

# Starts the sync daemon in the background.
start_daemon() {
  spawn daemon_pid "$here/r2-sync-daemon.sh"
  daemon_state=running
  log "sync daemon started (pid $daemon_pid, every ${R2_SYNC_INTERVAL:-5m})"
}

# Starts COMMAND in the background, without the backup's secrets.
# Usage: start_command <command> [arg...]
start_command() {
  spawn command_pid "${without_secrets[@]}" "$@"
  log "started $* (pid $command_pid)"
}

# Waits until a signal arrives (the trap then shuts down and exits) or COMMAND exits. Restarts the
# sync daemon when it dies, after a delay that doubles up to 5 minutes.
supervise() {
  local status
  while true; do
    wait -n || true
    if ! alive "$daemon_pid"; then
      wait_for "$daemon_pid"
      status=$last_status
      if [[ "$daemon_state" == running ]]; then
        log "ERROR: the sync daemon exited (status $status): NO BACKUPS are taken; restarting it in ${daemon_delay}s"
        spawn daemon_pid sleep "$daemon_delay"
        daemon_state=waiting
        daemon_delay=$((daemon_delay * 2 > 300 ? 300 : daemon_delay * 2))
      else
        start_daemon
      fi
    fi
    if [[ -n "$command_pid" ]] && ! alive "$command_pid"; then
      wait_for "$command_pid"
      status=$last_status
      command_pid=""
      log "the command exited (status $status); shutting down"
      shutdown "$status"
    fi
  done
}

# --- shutdown ------------------------------------------------------------------------------------

# The trap of SIGTERM and SIGINT.
# Usage: on_signal <TERM|INT>
on_signal() {
  log "received SIG$1; shutting down"
  shutdown 0
}

# A signal during the shutdown: the first one abandons the final sync, later ones are ignored.
# Usage: on_second_signal <TERM|INT>
on_second_signal() {
  if alive "$flush_pid"; then
    log "received SIG$1 again: abandoning the final sync"
    kill -TERM "$flush_pid" 2> /dev/null || true
  else
    log "received SIG$1 again: already shutting down"
  fi
}

# Syncs the final state to R2 once, under a time limit, and logs how it ended and how long it took.
# The running daemon does it (flush_by_daemon); when it is not running, or ends before it could take
# the request, a new sync process does (flush_by_new_process).
flush() {
  local start limit=${R2_FLUSH_TIMEOUT:-120} deadline
  start=$(now_us)
  deadline=$((SECONDS + limit))
  if [[ "$daemon_state" == running ]] && alive "$daemon_pid"; then
    log "final sync to R2 by the sync daemon (SIGUSR1, limit ${limit}s)"
    flush_by_daemon "$deadline"
    if ((last_status == 128 + 10)); then   # killed by SIGUSR1: its JVM was starting, without the handler yet
      log "the sync daemon ended at SIGUSR1 before it could take it (it was starting); syncing in a new process"
      flush_by_new_process "$((deadline - SECONDS > 1 ? deadline - SECONDS : 1))"
    fi
  else
    stop_child "$daemon_pid" "the sync daemon's restart timer"
    log "final sync to R2 (the sync daemon is not running; limit ${limit}s)"
    flush_by_new_process "$limit"
  fi
  case "$last_status" in
    0) log "final sync done: the snapshot holds the town as it was at the signal" ;;
    3) log "WARNING: final sync published a PARTIAL snapshot (exit 3): some parts were not backed up (see above)" ;;
    124 | 137 | 143) log "ERROR: final sync did not finish within its limit or was abandoned; R2 keeps the previous snapshot" ;;
    *) log "ERROR: final sync failed (exit $last_status); R2 keeps the previous snapshot" ;;
  esac
  log "flush took $(seconds_since "$start")"
}

# Asks the daemon for its final sync (SIGUSR1) and waits for it to exit with that sync's status, for at
# most until <deadline> (in SECONDS); then stops it (SIGTERM, then SIGKILL). Sets last_status (124 at the
# deadline).
# Usage: flush_by_daemon <deadline>
flush_by_daemon() {
  local deadline=$1
  flush_pid=$daemon_pid
  kill -USR1 "$daemon_pid" 2> /dev/null || true
  # Polled, not waited for: the traps (a second signal abandons the flush) run between the short sleeps.
  while alive "$daemon_pid" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if alive "$daemon_pid"; then
    stop_child "$daemon_pid" "the sync daemon" 5
    last_status=124
  else
    wait_for "$daemon_pid"
    stop_child "$daemon_pid" "the sync daemon"   # sweeps up what its process group left
  fi
  flush_pid=""
  daemon_pid=""
}

# Runs one sync in a new process (r2-sync-daemon.sh --immediate) for at most <limit> seconds. Sets
# last_status (124 or 137 at the limit).
# Usage: flush_by_new_process <limit-seconds>
flush_by_new_process() {
  # timeout(1) puts the sync in a process group of its own and signals the whole group at the limit.
  timeout --kill-after=5 "$1" "$here/r2-sync-daemon.sh" --immediate &
  flush_pid=$!
  wait_for "$flush_pid"
  flush_pid=""
}

# The shutdown sequence; never returns.
# Usage: shutdown <exit-status>
shutdown() {
  local exit_status=$1
  trap 'on_second_signal TERM' TERM
  trap 'on_second_signal INT' INT
  if [[ "$phase" == stopping ]]; then
    return 0
  fi
  if [[ "$phase" == restore ]]; then
    phase=stopping
    stop_child "$step_pid" "the restore"
    log "the restore was interrupted; the next start restores again. Exit 0"
    exit 0
  fi
  phase=stopping
  if alive "$step_pid"; then
    stop_child "$step_pid" "gt up"
  fi
  # The final sync is the last word in R2: after it no daemon cycle runs (the daemon exits with it, or
  # was stopped first).
  flush
  run_gt down
  stop_child "$command_pid" "the command"
  log "stopped; exit $exit_status"
  exit "$exit_status"
}

_main() {
  if (($# > 0)) && [[ "$1" != "--" ]]; then
    log "usage: startup.sh [-- COMMAND [ARG...]]"
    exit 2
  fi
  (($# > 0)) && shift
  here="$(script_dir)"
  export GT_TOWN_ROOT="${GT_TOWN_ROOT:-/home/gt/data}"
  if command -v setsid > /dev/null 2>&1; then
    have_setsid=1
  fi
  init_without_secrets
  trap 'on_signal TERM' TERM
  trap 'on_signal INT' INT
  log "starting town ${TOWN_ID:-<TOWN_ID unset>} (root $GT_TOWN_ROOT, pid $$)"

  restore_town
  phase=up
  run_gt up
  start_daemon
  if (($# > 0)); then
    start_command "$@"
  fi
  phase=running
  log "running; SIGTERM or SIGINT flushes to R2 and stops the town"
  supervise
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _main "$@"
fi
