#!/usr/bin/env bash
# Benchmark, side by side with restic: our sync and restore against `restic backup` / `restic restore` on the
# same town and the same S3 server (S3Proxy, filesystem store, on loopback), step by step, ours then restic:
#   1 first backup   2 no change   3 small change (1 dolt row committed, 1 git commit, 1 settings file edited)
#   4 restore into an empty dir   5 `jbang R2Sync.java --immediate` for a small change (ours only: the flush
#   when no daemon runs, JVM start included)   6 BENCH_CYCLES small-change cycles, then bucket size / first
#   snapshot's size.
# Ours runs as it does in the sandbox: steps 2, 3 and 6 are cycles of the warm sync daemon (started before the
# step, its first cycle not counted; the change made; then SIGUSR1, its final sync, measured from the signal to
# its exit), steps 1 and 5 are new processes (`jbang R2Sync.java --immediate`, JVM start included). Restic runs
# `restic backup` each time, as cron would.
# Per step and tool: wall and CPU seconds (user+sys, child processes included), peak RSS, bytes and requests
# sent to S3, bytes received from it, and the bucket's growth. Traffic is counted by a small HTTP proxy
# (python3 stdlib) in front of S3Proxy that both tools talk to; bucket sizes are the file sizes under S3Proxy's
# filesystem store, one bucket per tool and town size. One table per town size, with ours/restic ratios.
#
# Usage: tools/bench.sh
#   BENCH_SIZES="30 300"  town sizes in MiB of git data; Dolt rows scale with it (2000 per 3 MiB: 20000, 200000)
#   BENCH_ROWS            a fixed row count instead
#   BENCH_CYCLES=20       small-change cycles in step 6
#   BENCH_HEAP            a JVM heap cap instead of the scripts' own -Xmx128m (JAVA_TOOL_OPTIONS=-Xmx...)
#   BENCH_KEEP=1          keep the work dir (towns, buckets, per-step logs) and print its path
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/s3proxy.sh
source "$repo/tools/s3proxy.sh"
sizes="${BENCH_SIZES:-30 300}"
cycles="${BENCH_CYCLES:-20}"
heap="${BENCH_HEAP:-}"

# build_town ROOT SCRATCH MB ROWS: hq with a table of ROWS rows, rig alpha whose shallow .repo.git holds MB MiB
# of random data (cloned from SCRATCH/work, where later commits are made and pushed from), a settings file.
build_town() {
  local root="$1" scratch="$2" mb="$3" rows="$4"
  mkdir -p "$root/mayor" "$root/.dolt-data/hq" "$root/alpha/settings" "$scratch/work"
  echo '{"name":"bench"}' > "$root/mayor/town.json"
  echo '{"change":0}' > "$root/alpha/settings/config.json"
  python3 -c "
import random
print('id,title,body')
for i in range($rows): print(f'{i},issue {i},{random.getrandbits(256):064x}')" > "$scratch/rows.csv"
  (cd "$root/.dolt-data/hq" && dolt init > /dev/null &&
    dolt sql -q "create table issues (id int primary key, title varchar(80), body varchar(80))" &&
    dolt table import -u issues "$scratch/rows.csv" > /dev/null 2>&1 && dolt add . && dolt commit -m rows > /dev/null)
  git init -q "$scratch/work"
  local i
  for ((i = 0; i < mb / 10; i++)); do
    head -c $((10 * 1024 * 1024)) /dev/urandom > "$scratch/work/blob-$i.bin"
  done
  git -C "$scratch/work" add . && git -C "$scratch/work" commit -q -m data
  git clone -q --bare --depth 1 "file://$scratch/work" "$root/alpha/.repo.git"
}

# small_change ROOT SCRATCH N: one Dolt row inserted and committed, one git commit pushed into the rig's bare
# shallow repo, one settings file edited.
small_change() {
  local root="$1" scratch="$2" n="$3" branch
  (cd "$root/.dolt-data/hq" &&
    dolt sql -q "insert into issues values ($((10000000 + n)), 'change $n', 'bench')" > /dev/null &&
    dolt commit -am "change $n" > /dev/null)
  branch="$(git -C "$scratch/work" symbolic-ref --short HEAD)"
  echo "change $n $(date +%s%N)" > "$scratch/work/change-$n.txt"
  git -C "$scratch/work" add . && git -C "$scratch/work" commit -q -m "change $n"
  git -C "$scratch/work" push -q "$root/alpha/.repo.git" "$branch" 2> /dev/null
  echo "{\"change\":$n}" > "$root/alpha/settings/config.json"
}

# The counting proxy: forwards every request unchanged (Host and signed headers included) to S3Proxy, one
# upstream connection per request, streaming both ways; counts requests, request bytes (request line, headers,
# body as received) and response bytes. GET /__bench_stats answers the totals as JSON (not counted).
write_proxy() {
  cat > "$1" <<'PY'
import http.client, json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UP_HOST, UP_PORT = "127.0.0.1", int(sys.argv[2])
stats = {"requests": 0, "up": 0, "down": 0}
lock = threading.Lock()
DROP = {"connection", "keep-alive", "proxy-connection", "expect"}
CHUNK = 1 << 20

def count(key, n):
    with lock:
        stats[key] += n

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def relay(self):
        if self.path == "/__bench_stats":
            with lock:
                body = json.dumps(stats).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        count("requests", 1)
        count("up", len(self.requestline) + 2 + len(bytes(self.headers)))
        up = http.client.HTTPConnection(UP_HOST, UP_PORT, timeout=900)
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in DROP:
                    up.putheader(k, v)
            up.endheaders()
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while True:
                    line = self.rfile.readline()
                    up.send(line)
                    count("up", len(line))
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while True:
                            trailer = self.rfile.readline()
                            up.send(trailer)
                            count("up", len(trailer))
                            if trailer in (b"\r\n", b"\n", b""):
                                break
                        break
                    self.forward_body(up, size + 2)
            else:
                self.forward_body(up, int(self.headers.get("Content-Length") or 0))
            resp = up.getresponse()
            self.send_response_only(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
            for k, v in resp.getheaders():
                if k.lower() not in DROP and k.lower() != "transfer-encoding":
                    self.send_header(k, v)
            rechunk = not no_body and length is None
            if rechunk:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            count("down", sum(len(k) + len(v) + 4 for k, v in resp.getheaders()) + 20)
            if no_body:
                return
            while True:
                data = resp.read1(CHUNK) if rechunk else resp.read(CHUNK)
                if not data:
                    break
                count("down", len(data))
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if rechunk else data)
            if rechunk:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            up.close()

    def forward_body(self, up, n):
        while n > 0:
            data = self.rfile.read(min(n, CHUNK))
            if not data:
                raise ConnectionError("client closed mid-body")
            up.send(data)
            count("up", len(data))
            n -= len(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.daemon_threads = True
server.serve_forever()
PY
}

# stop_servers: S3Proxy, the counting proxy and a daemon still running (its JVM, the child of /usr/bin/time).
stop_servers() {
  if [[ -n "${DAEMON_PID:-}" ]]; then
    pkill -KILL -P "$DAEMON_PID" 2> /dev/null || true
  fi
  kill "${PROXY_PID:-0}" "${S3_PID:-0}" 2> /dev/null || true
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
  local port="$1" what="$2" tries=0
  until (echo > "/dev/tcp/127.0.0.1/$port") 2> /dev/null; do
    ((tries++ < 200)) || { echo "bench: $what did not start" >&2; exit 1; }
    sleep 0.1
  done
}

# start_s3 DIR: S3Proxy (tools/s3proxy.sh) with its store under DIR/blobs and the counting proxy in front of it;
# sets S3_PID, PROXY_PID, BLOBS and ENDPOINT (the proxy's URL, which both tools use).
start_s3() {
  local dir="$1" proxy_port
  s3proxy_start "$dir" bench bench-secret
  S3_PID=$S3PROXY_PID
  BLOBS="$dir/blobs"
  proxy_port="$(free_port)"
  write_proxy "$dir/s3count.py"
  python3 "$dir/s3count.py" "$proxy_port" "$S3PROXY_PORT" > "$dir/proxy.log" 2>&1 &
  PROXY_PID=$!
  wait_port "$proxy_port" "the counting proxy"
  ENDPOINT="http://127.0.0.1:$proxy_port"
}

# proxy_stats: "requests up down" so far.
proxy_stats() {
  python3 -c "
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(sys.argv[1] + '/__bench_stats'))
print(s['requests'], s['up'], s['down'])" "$ENDPOINT"
}

# bucket_bytes BUCKET: total size of the files S3Proxy stores for the bucket.
bucket_bytes() {
  python3 -c "
import os, sys
print(sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(sys.argv[1]) for f in fs))" "$BLOBS/$1"
}

# measure STEP TOOL BUCKET CMD...: runs CMD under /usr/bin/time and records it (record). A failing CMD is
# recorded (rc) and its log shown; the run goes on.
measure() {
  local step="$1" tool="$2" bucket="$3"
  shift 3
  local log="$LOGS/$tool-${step// /_}-$((++log_seq)).log" rc=0 b0 s0 wall user sys rss
  b0="$(bucket_bytes "$bucket")"
  s0="$(proxy_stats)"
  /usr/bin/time -f '%e %U %S %M' -o "$work/time.txt" "$@" > "$log" 2>&1 || rc=$?
  read -r wall user sys rss < <(tail -n 1 "$work/time.txt")
  record "$step" "$tool" "$bucket" "$log" "$rc" "$wall" "$(python3 -c "print(round($user + $sys, 2))")" "$rss" "$s0" "$b0"
}

# daemon_cycle STEP [CHANGE...]: one cycle of our warm daemon: starts it (R2Sync.java with no --immediate; its
# first cycle runs at start and is not counted), runs CHANGE, asks for its final sync (SIGUSR1) and records
# that sync, from the signal to the daemon's exit: wall, CPU (the JVM and the dolt and git it ran, less what
# they had used before the signal), the daemon's peak RSS, and the traffic and bucket growth since the signal.
daemon_cycle() {
  local step="$1"
  shift
  local log="$LOGS/ours-${step// /_}-$((++log_seq)).log" rc=0 time_pid pid b0 s0 cpu0 t0 t1 wall user sys rss tries=0
  R2_SYNC_INTERVAL=1h /usr/bin/time -f '%e %U %S %M' -o "$work/time.txt" "$repo/jbang" "$repo/R2Sync.java" > "$log" 2>&1 &
  time_pid=$!
  DAEMON_PID=$time_pid   # for the exit trap: a bench stopped midway leaves no daemon behind
  until grep -q ': ok in \|: FAILED\|failed' "$log" 2> /dev/null; do
    ((tries++ < 3000)) || { echo "bench: the daemon's first cycle did not end; see $log" >&2; exit 1; }
    sleep 0.1
  done
  (($# == 0)) || "$@"
  pid="$(pgrep -P "$time_pid")"
  b0="$(bucket_bytes "$OURS_BUCKET")"
  s0="$(proxy_stats)"
  # utime stime cutime cstime of the JVM (fields 14-17), in clock ticks.
  cpu0="$(awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13 + $14 + $15) / hz }' "/proc/$pid/stat")"
  t0="$EPOCHREALTIME"
  kill -USR1 "$pid"
  wait "$time_pid" || rc=$?
  t1="$EPOCHREALTIME"
  DAEMON_PID=
  read -r wall user sys rss < <(tail -n 1 "$work/time.txt")
  record "$step" ours "$OURS_BUCKET" "$log" "$rc" "$(python3 -c "print(round($t1 - $t0, 2))")" \
    "$(python3 -c "print(round($user + $sys - $cpu0, 2))")" "$rss" "$s0" "$b0"
}

# record STEP TOOL BUCKET LOG RC WALL CPU RSS_KB STATS_BEFORE BUCKET_BEFORE: appends one result row to $results:
# step tool rc wall cpu rss_kb requests up down bucket_before bucket_after (traffic and bucket: now less before).
record() {
  local step="$1" tool="$2" bucket="$3" log="$4" rc="$5" wall="$6" cpu="$7" rss="$8" s0="$9" b0="${10}" b1 s1 a0 a1
  s1="$(proxy_stats)"
  b1="$(bucket_bytes "$bucket")"
  if ((rc != 0)); then
    echo "bench: $tool '$step' exited $rc; last lines of $log:" >&2
    tail -n 15 "$log" | sed 's/^/  /' >&2
  fi
  read -r -a a0 <<< "$s0"
  read -r -a a1 <<< "$s1"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$step" "$tool" "$rc" "$wall" "$cpu" "$rss" \
    "$((a1[0] - a0[0]))" "$((a1[1] - a0[1]))" "$((a1[2] - a0[2]))" "$b0" "$b1" >> "$results"
}

ours_sync() { measure "$1" ours "$OURS_BUCKET" "$repo/jbang" "$repo/R2Sync.java" --immediate; }
restic_sync() { measure "$1" restic "$RESTIC_BUCKET" restic backup -q --host bench "$GT_TOWN_ROOT"; }

# print_table RESULTS HEADER: one table of a town size, with ours/restic ratios.
print_table() {
  python3 - "$1" "$2" "$cycles" <<'PY'
import sys
from collections import OrderedDict
path, header, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = OrderedDict()
for line in open(path):
    step, tool, rc, wall, cpu, rss, req, up, down, b0, b1 = line.rstrip("\n").split("\t")
    r = rows.setdefault((step, tool), dict(rc=0, wall=0.0, cpu=0.0, rss=0, req=0, up=0, down=0, b0=int(b0), n=0))
    r["rc"] = r["rc"] or int(rc)
    r["wall"] += float(wall); r["cpu"] += float(cpu); r["rss"] = max(r["rss"], int(rss) // 1024)
    r["req"] += int(req); r["up"] += int(up); r["down"] += int(down); r["b1"] = int(b1); r["n"] += 1

def size(n):
    sign, n = ("-" if n < 0 else ""), abs(n)
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{sign}{n / scale:.1f}{unit}"
    return f"{sign}{n}B"

def ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"

print(header)
cols = f"{'step':<26}{'tool':<13}{'wall s':>8}{'cpu s':>8}{'rss MiB':>9}{'up':>9}{'reqs':>7}{'down':>9}{'+bucket':>9}{'bucket':>9}"
print(cols)
print("-" * len(cols))
for step in dict.fromkeys(s for s, _ in rows):
    label = step
    for tool in ("ours", "restic"):
        r = rows.get((step, tool))
        if r is None:
            print(f"{label:<26}{tool:<13}{'n/a (no equivalent)':>30}")
        else:
            fail = f"  FAILED rc={r['rc']}" if r["rc"] else ""
            print(f"{label:<26}{tool:<13}{r['wall']:8.1f}{r['cpu']:8.1f}{r['rss']:9d}{size(r['up']):>9}{r['req']:7d}"
                  f"{size(r['down']):>9}{size(r['b1'] - r['b0']):>9}{size(r['b1']):>9}{fail}")
        label = ""
    o, t = rows.get((step, "ours")), rows.get((step, "restic"))
    if o and t:
        print(f"{'':<26}{'ours/restic':<13}{ratio(o['wall'], t['wall']):>8}{'':8}{'':9}{ratio(o['up'], t['up']):>9}"
              f"{'':7}{ratio(o['down'], t['down']):>9}{'':9}{ratio(o['b1'], t['b1']):>9}")
first_step = next(iter(rows))[0]
last_step = list(rows)[-1][0]
parts = []
for tool in ("ours", "restic"):
    first, last = rows.get((first_step, tool)), rows.get((last_step, tool))
    if first and last and first["b1"]:
        parts.append(f"{tool} {size(last['b1'])} / {size(first['b1'])} = {last['b1'] / first['b1']:.2f}x")
print(f"bucket after {cycles} cycles / bucket after the first backup (target < 1.3x): " + ";  ".join(parts))
PY
}

# warm_class_data: what a machine that ran the scripts before holds, each script's class-data archive (see
# ./jbang): a sync and a restore of a small town list the classes they load, the next start of each builds
# its archive in the background, and the bench waits for both (at most 2 minutes).
warm_class_data() {
  local dir="$work/warm" launches i
  launches="$(dirname "$(bash "$repo/tools/install-jbang.sh")")/launches"
  build_town "$dir/town" "$dir/scratch" 10 100
  mkdir -p "$BLOBS/warm"
  TOWN_ID=warm GT_TOWN_ROOT="$dir/town" R2_WORK_DIR="$dir/work" R2_STATE_DIR="$dir/state" R2_SYNC_LOCK="$dir/lock" \
    R2_ENDPOINT="$ENDPOINT" R2_BUCKET=warm "$repo/jbang" "$repo/R2Sync.java" --immediate > /dev/null 2>&1 || true
  TOWN_ID=warm GT_TOWN_ROOT="$dir/restored" R2_WORK_DIR="$dir/work" R2_STATE_DIR="$dir/restore-state" \
    R2_ENDPOINT="$ENDPOINT" R2_BUCKET=warm "$repo/jbang" "$repo/R2Restore.java" > /dev/null 2>&1 || true
  "$repo/jbang" "$repo/R2Sync.java" --version > /dev/null 2>&1 || true
  "$repo/jbang" "$repo/R2Restore.java" --version > /dev/null 2>&1 || true
  for ((i = 0; i < 120; i++)); do
    [[ -f "$launches/R2Sync.java.jsa" && -f "$launches/R2Restore.java.jsa" ]] && break
    sleep 1
  done
  rm -rf "$dir"
}

# bench_size MB: builds a town of MB MiB of git data, runs every step for both tools, prints the table.
bench_size() {
  local mb="$1" rows n=0 dir="$work/size-$1"
  rows="${BENCH_ROWS:-$((mb * 2000 / 3))}"
  echo "bench: building a town with $mb MiB of git data and $rows Dolt rows" >&2
  build_town "$dir/town" "$dir/scratch" "$mb" "$rows"
  OURS_BUCKET="ours-$mb" RESTIC_BUCKET="restic-$mb"
  LOGS="$dir/logs"
  mkdir -p "$BLOBS/$OURS_BUCKET" "$BLOBS/$RESTIC_BUCKET" "$LOGS"
  export TOWN_ID=bench GT_TOWN_ROOT="$dir/town" R2_WORK_DIR="$dir/sync-work" R2_STATE_DIR="$dir/state"
  export R2_SYNC_LOCK="$dir/r2-sync.lock" R2_ENDPOINT="$ENDPOINT" R2_BUCKET="$OURS_BUCKET"
  export RESTIC_REPOSITORY="s3:$ENDPOINT/$RESTIC_BUCKET" RESTIC_CACHE_DIR="$dir/restic-cache"
  restic init -q > /dev/null
  results="$dir/results.tsv"
  : > "$results"
  local town_bytes jvm_start
  town_bytes="$(du -sb "$GT_TOWN_ROOT" | cut -f1)"
  /usr/bin/time -f '%e' -o "$dir/jvm-start.txt" "$repo/jbang" "$repo/R2Sync.java" --help > /dev/null 2>&1 || true
  jvm_start="$(tail -n 1 "$dir/jvm-start.txt")"

  ours_sync "1 first backup"; restic_sync "1 first backup"
  daemon_cycle "2 no change"; restic_sync "2 no change"
  daemon_cycle "3 small change" small_change "$GT_TOWN_ROOT" "$dir/scratch" $((++n))
  restic_sync "3 small change"
  # A fresh machine: an empty town root, and for restic an empty cache.
  GT_TOWN_ROOT="$dir/restore-ours" R2_STATE_DIR="$dir/restore-state" \
    measure "4 restore" ours "$OURS_BUCKET" "$repo/jbang" "$repo/R2Restore.java"
  measure "4 restore" restic "$RESTIC_BUCKET" \
    restic restore -q latest --target "$dir/restore-restic" --cache-dir "$dir/restic-cache-restore"
  small_change "$GT_TOWN_ROOT" "$dir/scratch" $((++n))
  ours_sync "5 --immediate (flush)"
  local i
  for ((i = 0; i < cycles; i++)); do
    daemon_cycle "6 $cycles small changes" small_change "$GT_TOWN_ROOT" "$dir/scratch" $((++n))
    restic_sync "6 $cycles small changes"
  done

  local restored_ours=0 restored_restic=0
  [[ -d "$dir/restore-ours" ]] && restored_ours="$(du -sb "$dir/restore-ours" | cut -f1)"
  [[ -d "$dir/restore-restic" ]] && restored_restic="$(du -sb "$dir/restore-restic" | cut -f1)"
  echo
  print_table "$results" "== town $mb MB: $((town_bytes / 1048576)) MiB on disk ($mb MiB git data, $rows Dolt rows);\
 JVM heap ${heap:-as shipped};\
 $(nproc) cores; start through ./jbang (--help) ${jvm_start} s; ours: steps 2, 3, 6 a warm daemon's cycle, 1 and 5 a new process =="
  echo "restored on disk: ours $((restored_ours / 1048576)) MiB, restic $((restored_restic / 1048576)) MiB" \
    "(town at restore time $((town_bytes / 1048576)) MiB before changes)"
  echo "load average at the end (other work on this machine skews wall times): $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "ours: $(grep -h "uploaded" "$LOGS/"ours-3_small_change-*.log | tail -n 1 || echo "no 'uploaded' line")"
  [[ -n "${BENCH_KEEP:-}" ]] || rm -rf "$dir/restore-ours" "$dir/restore-restic" "$dir/sync-work"
}

_main() {
  eval "$(bash "$repo/tools/install-tools.sh")"
  restic_bin="$(bash "$repo/tools/install-restic.sh")"
  PATH="$(dirname "$DOLT_BIN"):$(dirname "$restic_bin"):$PATH"
  work="$(mktemp -d "${TMPDIR:-/tmp}/gastown-r2-bench.XXXXXX")"
  log_seq=0
  if [[ -n "${BENCH_KEEP:-}" ]]; then
    trap 'stop_servers; echo "bench: kept $work" >&2' EXIT
  else
    trap 'stop_servers; rm -rf "$work"' EXIT
  fi
  export DOLT_ROOT_PATH="$work/dolt-root" GIT_CONFIG_GLOBAL="$work/gitconfig"
  git config --global user.name bench && git config --global user.email bench@example.invalid
  mkdir -p "$DOLT_ROOT_PATH"
  dolt config --global --add metrics.disabled true > /dev/null
  dolt config --global --add user.name bench > /dev/null && dolt config --global --add user.email bench@example.invalid > /dev/null

  start_s3 "$work/s3"
  export R2_ACCESS_KEY_ID=bench R2_SECRET_ACCESS_KEY=bench-secret AWS_ACCESS_KEY_ID=bench
  export AWS_SECRET_ACCESS_KEY=bench-secret RESTIC_PASSWORD=bench R2_NO_PROGRESS=1
  [[ -z "$heap" ]] || export JAVA_TOOL_OPTIONS="-Xmx$heap"
  # Built, their java command lines recorded by the launcher and their class-data archives made, before any
  # step (as on a machine that ran them before, or a baked image).
  "$repo/jbang" "$repo/R2Sync.java" --version > /dev/null 2>&1 || true
  "$repo/jbang" "$repo/R2Restore.java" --version > /dev/null 2>&1 || true
  warm_class_data
  echo "bench: ours = $(git -C "$repo" log -1 --format='%h %s'); $(restic version)"
  local mb
  for mb in $sizes; do
    bench_size "$mb"
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _main "$@"
fi
