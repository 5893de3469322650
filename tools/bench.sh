#!/usr/bin/env bash
# Benchmark, side by side with restic: our sync and restore against `restic backup` / `restic restore` on the
# same town and the same S3 server (S3Proxy, filesystem store, on loopback), step by step, ours then each restic.
# Two restics (tools/install-restic.sh): the newest that builds here (0.18.1, tools/versions.sh RESTIC_VERSION,
# the main peer) and Debian's 0.14; each has a bucket of its own, and the tables give ours/each ratios.
#
# Two towns (BENCH_TOWNS):
# bench: a town of BENCH_SIZES MiB (git data in a shallow bare repo, Dolt rows, a settings file), no work trees.
#   1 first backup   2 no change   3 small change (1 dolt row committed, 1 git commit, 1 settings file edited)
#   4 restore into an empty dir   5 `jbang R2Sync.java --immediate` for a small change (ours only: the flush
#   when no daemon runs, JVM start included)   6 BENCH_CYCLES small-change cycles, then bucket size / first
#   snapshot's size.
#   Ours runs as it does in the sandbox: steps 2, 3 and 6 are cycles of the warm sync daemon (started before the
#   step, its first cycle not counted; the change made; then SIGUSR1, its final sync, measured from the signal
#   to its exit), steps 1 and 5 are new processes (`jbang R2Sync.java --immediate`, JVM start included).
# many: the many-paths town, about BENCH_PATHS paths (files, dirs, symlinks): BENCH_CHECKOUTS clones of one
#   repo (alpha/.repo.git, bare) under alpha/crew/<name>/, each with a tracked vendor/ tree of small text files
#   (about 60% of its paths) and an ignored node_modules/ (.gitignore; packages of tiny files, 3 of 4 identical
#   in every checkout, every LICENSE identical, a few .bin symlinks, a few files hard-linked across checkouts).
#   1 first backup   2 no change   3 small change (in one work tree: 5 tracked files edited, 3 ignored ones
#   touched, 1 untracked file added)   4 restore into an empty dir.
#   Ours runs cold in every step: `jbang R2Sync.java --immediate` and `jbang R2Restore.java`, new processes.
#   With two or more sizes, a growth table follows: each step's cost at the largest size / at the smallest.
# Restic runs `restic backup` each time, as cron would; its restore starts with an empty cache.
# Per step and tool: wall and CPU seconds (user+sys, child processes included), peak RSS, bytes and requests
# sent to S3, bytes received from it, and the bucket's growth. Traffic is counted by a small HTTP proxy
# (python3 stdlib) in front of S3Proxy that all tools talk to; bucket sizes are the file sizes under S3Proxy's
# filesystem store, one bucket per tool and town. One table per town, with ours/restic ratios.
#
# Usage: tools/bench.sh
#   BENCH_TOWNS="bench many"  which towns to run
#   BENCH_SIZES="30 300"  bench town sizes in MiB of git data; Dolt rows scale with it (2000 per 3 MiB: 20000, 200000)
#   BENCH_ROWS            a fixed row count instead
#   BENCH_CYCLES=20       small-change cycles in step 6
#   BENCH_PATHS=100000    many-paths town sizes in paths, e.g. "100000 1000000" (the full size: 1M paths, several
#                         GiB on disk for the town and each restore; its build takes about 10 s per 100k paths)
#   BENCH_CHECKOUTS=4     work trees in the many-paths town
#   BENCH_HEAP            a JVM heap cap instead of the scripts' own -Xmx128m (JAVA_TOOL_OPTIONS=-Xmx...)
#   BENCH_STEP_TIMEOUT    a limit for each measured command (timeout(1) syntax, e.g. 15m); one over it is recorded
#                         as failed (rc 124) and the run goes on
#   BENCH_KEEP=1          keep the work dir (towns, buckets, per-step logs) and print its path
#   BENCH_SEALED=1        ours sealed with a town key (R2_ENCRYPTION_KEY), as restic always encrypts; 0: unsealed
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tools/s3proxy.sh
source "$repo/tools/s3proxy.sh"
towns="${BENCH_TOWNS:-bench many}"
sizes="${BENCH_SIZES:-30 300}"
cycles="${BENCH_CYCLES:-20}"
paths_sizes="${BENCH_PATHS:-100000}"
checkouts="${BENCH_CHECKOUTS:-4}"
heap="${BENCH_HEAP:-}"
step_timeout="${BENCH_STEP_TIMEOUT:-}"

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

# The many-paths town's builder (python3 stdlib), one process writing every file:
#   tracked WORK FILES               the repo's tracked tree: README.md, .gitignore (node_modules/), src/, and
#                                    vendor/libNNNN/mNN/ dirs of 40 small text files each (FILES in all)
#   ignored CHANGES PKGS CHECKOUT... each checkout's node_modules/: PKGS packages of 18 paths (package.json,
#                                    index.js, an identical LICENSE, README.md, lib/ with 12 tiny files); 3 of 4
#                                    are the same package in every checkout, the 4th a version of its own; .bin/
#                                    symlinks; in every checkout but the first, 5 index.js hard-linked to the
#                                    first's. Writes CHANGES: what many_change edits and touches.
#   census DIR                       "paths files dirs symlinks hardlinked bytes" under DIR (zeros: no DIR)
write_many_town_py() {
  cat > "$1" <<'PY'
import json, os, random, sys

WORDS = ("const return value index buffer parse module export function if else for let var require options "
         "callback error result length node path config string number object array self this data map key "
         "async await throw new class import from default type interface").split()
pool_rnd = random.Random(7)
POOL = ["    " * pool_rnd.randint(0, 3) + " ".join(pool_rnd.choice(WORDS) for _ in range(pool_rnd.randint(3, 9))) + ";\n"
        for _ in range(4000)]
LICENSE = "MIT License\n\nCopyright (c) bench\n\n" + "Permission is hereby granted, free of charge, to any person " * 14 + "\n"
EXTS = (".go", ".js", ".py", ".txt", ".md")

def write(path, text):
    with open(path, "w") as f:
        f.write(text)

def tracked(work, nfiles):
    rnd = random.Random(1)
    write(os.path.join(work, "README.md"), "# many\n\nA repo of many small files.\n")
    write(os.path.join(work, ".gitignore"), "node_modules/\n*.log\n")
    os.makedirs(os.path.join(work, "src"), exist_ok=True)
    write(os.path.join(work, "src", "main.go"), "package main\n\nfunc main() {}\n")
    last = None
    for i in range(nfiles):
        leaf = i // 40
        d = os.path.join(work, "vendor", f"lib{leaf // 8:04d}", f"m{leaf % 8:02d}")
        if d != last:
            os.makedirs(d, exist_ok=True)
            last = d
        name = f"f{i % 40:02d}{EXTS[i % len(EXTS)]}"
        write(os.path.join(d, name), f"// {d[len(work) + 1:]}/{name}\n" + "".join(rnd.choices(POOL, k=rnd.randint(2, 20))))

def package(nm, i, version):
    rnd = random.Random(f"{i}-{version}")
    name = f"pkg-{i:05d}"
    p = os.path.join(nm, name)
    os.makedirs(os.path.join(p, "lib"))
    write(os.path.join(p, "package.json"), json.dumps({"name": name, "version": version, "main": "index.js"}) + "\n")
    write(os.path.join(p, "index.js"), "".join(rnd.choices(POOL, k=rnd.randint(1, 6))))
    write(os.path.join(p, "LICENSE"), LICENSE)
    write(os.path.join(p, "README.md"), f"# {name}\n\nversion {version}\n")
    for j in range(12):
        write(os.path.join(p, "lib", f"l{j:02d}.js"), "".join(rnd.choices(POOL, k=rnd.randint(1, 6))))

def ignored(changes, npkgs, checkouts):
    for c, ck in enumerate(checkouts):
        nm = os.path.join(ck, "node_modules")
        os.makedirs(os.path.join(nm, ".bin"))
        for i in range(npkgs):
            package(nm, i, f"2.{c}.0" if i % 4 == 3 else "1.0.0")
        for i in range(min(20, npkgs)):
            os.symlink(f"../pkg-{i:05d}/index.js", os.path.join(nm, ".bin", f"pkg-{i:05d}"))
        if c > 0:
            for i in [i for i in range(min(7, npkgs)) if i % 4 != 3][:5]:
                rel = os.path.join("node_modules", f"pkg-{i:05d}", "index.js")
                os.unlink(os.path.join(ck, rel))
                os.link(os.path.join(checkouts[0], rel), os.path.join(ck, rel))
    with open(changes, "w") as f:
        for i in range(5):
            f.write(f"edit vendor/lib0000/m00/f{i:02d}{EXTS[i % len(EXTS)]}\n")
        for i in range(10, min(13, npkgs)):
            f.write(f"touch node_modules/pkg-{i:05d}/lib/l00.js\n")

def census(top):
    n = {"paths": 0, "files": 0, "dirs": 0, "symlinks": 0, "hardlinked": 0, "bytes": 0}
    stack = [top]
    while stack:
        for e in os.scandir(stack.pop()):
            st = e.stat(follow_symlinks=False)
            n["paths"] += 1
            if e.is_symlink():
                n["symlinks"] += 1
            elif e.is_dir(follow_symlinks=False):
                n["dirs"] += 1
                stack.append(e.path)
            else:
                n["files"] += 1
                n["bytes"] += st.st_size
                n["hardlinked"] += st.st_nlink > 1
    print(*n.values())

mode, args = sys.argv[1], sys.argv[2:]
if mode == "tracked":
    tracked(args[0], int(args[1]))
elif mode == "ignored":
    ignored(args[0], int(args[1]), args[2:])
elif os.path.isdir(args[0]):
    census(args[0])
else:
    print(0, 0, 0, 0, 0, 0)   # nothing there (a restore that failed)
PY
}

# build_many_town ROOT SCRATCH PATHS CHECKOUTS: the many-paths town (see the header), about PATHS paths: the
# tracked tree committed in SCRATCH/work, cloned bare (one pack) to alpha/.repo.git, CHECKOUTS clones of that
# under alpha/crew/<name>/ (through file://, so each has a pack of its own, as gt's crew clones do), then each
# checkout's node_modules/. Of each checkout's share, 60% goes to vendor/, 40% to node_modules/.
build_many_town() {
  local root="$1" scratch="$2" paths="$3" n="$4" share files pkgs name i crews=()
  local names=(ann bob cat dan eve fay gus hal ida jon kim lee max ned oli pam)
  ((n >= 1 && n <= ${#names[@]})) || { echo "bench: BENCH_CHECKOUTS must be 1 to ${#names[@]}" >&2; exit 1; }
  # About 40 paths of git metadata per clone and 60 for the bare repo and the town's own files.
  share=$(((paths - 60 - 40 * n) / n))
  files=$((share * 6 * 320 / (10 * 329)))   # vendor/ holds a dir per 40 files and a lib dir per 8 of those
  pkgs=$((share * 4 / 10 / 18))
  ((files > 0 && pkgs > 0)) || { echo "bench: BENCH_PATHS=$paths is too small" >&2; exit 1; }
  mkdir -p "$root/mayor" "$root/alpha/crew" "$scratch/work"
  echo '{"name":"many"}' > "$root/mayor/town.json"
  python3 "$MANY_PY" tracked "$scratch/work" "$files"
  git init -q "$scratch/work"
  git -C "$scratch/work" add -A && git -C "$scratch/work" commit -q -m "many small files"
  git clone -q --bare --no-local "$scratch/work" "$root/alpha/.repo.git"
  for ((i = 0; i < n; i++)); do
    name="${names[i]}"
    git clone -q "file://$root/alpha/.repo.git" "$root/alpha/crew/$name"
    crews+=("$root/alpha/crew/$name")
  done
  python3 "$MANY_PY" ignored "$scratch/changes.txt" "$pkgs" "${crews[@]}"
}

# many_change ROOT SCRATCH N: in the first work tree, edits 5 tracked files, touches 3 ignored ones (mtime only)
# and adds an untracked file.
many_change() {
  local wt="$1/alpha/crew/ann" scratch="$2" n="$3" kind rel
  while read -r kind rel; do
    case "$kind" in
      edit) echo "// change $n" >> "$wt/$rel" ;;
      touch) touch "$wt/$rel" ;;
    esac
  done < "$scratch/changes.txt"
  echo "notes of change $n" > "$wt/notes-$n.md"
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

# measure STEP TOOL BUCKET CMD...: runs CMD under /usr/bin/time (and timeout(1) with BENCH_STEP_TIMEOUT) and
# records it (record). A failing CMD is recorded (rc) and its log shown; the run goes on.
measure() {
  local step="$1" tool="$2" bucket="$3"
  shift 3
  local log="$LOGS/${tool// /-}-${step// /_}-$((++log_seq)).log" rc=0 b0 s0 wall user sys rss limit=()
  [[ -z "$step_timeout" ]] || limit=(timeout -k 10 "$step_timeout")
  b0="$(bucket_bytes "$bucket")"
  s0="$(proxy_stats)"
  /usr/bin/time -f '%e %U %S %M' -o "$work/time.txt" "${limit[@]}" "$@" > "$log" 2>&1 || rc=$?
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

# restic_setup KEY DIR: a bucket per restic for a town (restic<version digits>-KEY), each initialised as a
# repository; sets RESTIC_BUCKETS, RESTIC_REPOS and RESTIC_CACHES (under DIR), index by index with RESTIC_BINS.
restic_setup() {
  local key="$1" dir="$2" i
  RESTIC_BUCKETS=() RESTIC_REPOS=() RESTIC_CACHES=()
  for i in "${!RESTIC_BINS[@]}"; do
    RESTIC_BUCKETS+=("restic${RESTIC_VERSIONS[i]//./}-$key")
    RESTIC_REPOS+=("s3:$ENDPOINT/${RESTIC_BUCKETS[i]}")
    RESTIC_CACHES+=("$dir/restic-cache-${RESTIC_VERSIONS[i]}")
    mkdir -p "$BLOBS/${RESTIC_BUCKETS[i]}"
    "${RESTIC_BINS[i]}" -r "${RESTIC_REPOS[i]}" --cache-dir "${RESTIC_CACHES[i]}" init -q > /dev/null
  done
}

# restic_sync STEP: `restic backup` of the town by each restic, the newest first.
restic_sync() {
  local i
  for i in "${!RESTIC_BINS[@]}"; do
    measure "$1" "restic ${RESTIC_VERSIONS[i]}" "${RESTIC_BUCKETS[i]}" "${RESTIC_BINS[i]}" -r "${RESTIC_REPOS[i]}" \
      --cache-dir "${RESTIC_CACHES[i]}" backup -q --host bench "$GT_TOWN_ROOT"
  done
}

# restic_restore STEP DIR: `restic restore latest` by each restic into DIR/restore-restic-<version>, an empty
# dir, with an empty cache (a fresh machine). Restic puts the town at its absolute path under the target.
restic_restore() {
  local dir="$2" i v
  for i in "${!RESTIC_BINS[@]}"; do
    v="${RESTIC_VERSIONS[i]}"
    measure "$1" "restic $v" "${RESTIC_BUCKETS[i]}" "${RESTIC_BINS[i]}" -r "${RESTIC_REPOS[i]}" \
      --cache-dir "$dir/restic-cache-restore-$v" restore -q latest --target "$dir/restore-restic-$v"
  done
}

# print_table RESULTS HEADER CYCLES: one table of a town, ours then each restic (in the order they ran), with
# ours/restic ratios for each; with CYCLES > 0 a last line on the bucket after the last step / after the first.
print_table() {
  python3 - "$1" "$2" "$3" <<'PY'
import sys
from collections import OrderedDict
path, header, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = OrderedDict()
tools = []
for line in open(path):
    step, tool, rc, wall, cpu, rss, req, up, down, b0, b1 = line.rstrip("\n").split("\t")
    if tool not in tools:
        tools.append(tool)
    r = rows.setdefault((step, tool), dict(rc=0, wall=0.0, cpu=0.0, rss=0, req=0, up=0, down=0, b0=int(b0), n=0))
    r["rc"] = r["rc"] or int(rc)
    r["wall"] += float(wall); r["cpu"] += float(cpu); r["rss"] = max(r["rss"], int(rss) // 1024)
    r["req"] += int(req); r["up"] += int(up); r["down"] += int(down); r["b1"] = int(b1); r["n"] += 1
tools.sort(key=lambda t: t != "ours")
peers = [t for t in tools if t != "ours"]

def size(n):
    sign, n = ("-" if n < 0 else ""), abs(n)
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale:
            return f"{sign}{n / scale:.1f}{unit}"
    return f"{sign}{n}B"

def ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"

print(header)
cols = (f"{'step':<26}{'tool':<15}{'wall s':>8}{'cpu s':>8}{'rss MiB':>9}{'up':>9}{'reqs':>7}{'down':>9}"
        f"{'+bucket':>9}{'bucket':>9}")
print(cols)
print("-" * len(cols))
for step in dict.fromkeys(s for s, _ in rows):
    label = step
    for tool in tools:
        r = rows.get((step, tool))
        if r is None:
            print(f"{label:<26}{tool:<15}{'n/a (no equivalent)':>30}")
        else:
            fail = f"  FAILED rc={r['rc']}" if r["rc"] else ""
            print(f"{label:<26}{tool:<15}{r['wall']:8.1f}{r['cpu']:8.1f}{r['rss']:9d}{size(r['up']):>9}{r['req']:7d}"
                  f"{size(r['down']):>9}{size(r['b1'] - r['b0']):>9}{size(r['b1']):>9}{fail}")
        label = ""
    o = rows.get((step, "ours"))
    for peer in peers:
        t = rows.get((step, peer))
        if o and t:
            print(f"{'':<26}{'ours/' + peer.split()[-1]:<15}{ratio(o['wall'], t['wall']):>8}{ratio(o['cpu'], t['cpu']):>8}"
                  f"{ratio(o['rss'], t['rss']):>9}{ratio(o['up'], t['up']):>9}{ratio(o['req'], t['req']):>7}"
                  f"{ratio(o['down'], t['down']):>9}{'':9}{ratio(o['b1'], t['b1']):>9}")
if cycles:
    first_step = next(iter(rows))[0]
    last_step = list(rows)[-1][0]
    parts = []
    for tool in tools:
        first, last = rows.get((first_step, tool)), rows.get((last_step, tool))
        if first and last and first["b1"]:
            parts.append(f"{tool} {size(last['b1'])} / {size(first['b1'])} = {last['b1'] / first['b1']:.2f}x")
    print(f"bucket after {cycles} cycles / bucket after the first backup (target < 1.3x): " + ";  ".join(parts))
PY
}

# print_growth PATHS:CENSUS:RESULTS...: for the many-paths town at two or more sizes, each step's cost per tool
# at the largest size / at the smallest (wall, CPU, peak RSS, bytes and requests sent, bytes received, the bucket
# after it).
print_growth() {
  python3 - "$@" <<'PY'
import sys
from collections import OrderedDict

def load(path):
    rows = OrderedDict()
    for line in open(path):
        step, tool, rc, wall, cpu, rss, req, up, down, b0, b1 = line.rstrip("\n").split("\t")
        rows[(step, tool)] = dict(rc=int(rc), wall=float(wall), cpu=float(cpu), rss=int(rss), req=int(req), up=int(up),
                                  down=int(down), bucket=int(b1))
    return rows

runs = [a.split(":", 2) for a in sys.argv[1:]]
(p0, c0, f0), (p1, c1, f1) = runs[0], runs[-1]
small, big = load(f0), load(f1)

def ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"

print(f"== many-paths town: growth from {int(p0):,} to {int(p1):,} paths asked ({int(c0):,} to {int(c1):,} on disk,"
      f" {int(c1) / int(c0):.2f}x): each cost at {int(p1):,} / at {int(p0):,} ==")
cols = f"{'step':<26}{'tool':<15}{'wall':>8}{'cpu':>8}{'rss':>8}{'up':>8}{'reqs':>8}{'down':>8}{'bucket':>8}"
print(cols)
print("-" * len(cols))
for step in dict.fromkeys(s for s, _ in small):
    label = step
    for tool in sorted(dict.fromkeys(t for s, t in small if s == step), key=lambda t: t != "ours"):
        a, b = small.get((step, tool)), big.get((step, tool))
        if not b:
            continue
        failed = "  (a run FAILED)" if a["rc"] or b["rc"] else ""
        print(f"{label:<26}{tool:<15}{ratio(b['wall'], a['wall']):>8}{ratio(b['cpu'], a['cpu']):>8}"
              f"{ratio(b['rss'], a['rss']):>8}{ratio(b['up'], a['up']):>8}{ratio(b['req'], a['req']):>8}{ratio(b['down'], a['down']):>8}"
              f"{ratio(b['bucket'], a['bucket']):>8}{failed}")
        label = ""
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
  OURS_BUCKET="ours-$mb"
  LOGS="$dir/logs"
  mkdir -p "$BLOBS/$OURS_BUCKET" "$LOGS"
  export TOWN_ID=bench GT_TOWN_ROOT="$dir/town" R2_WORK_DIR="$dir/sync-work" R2_STATE_DIR="$dir/state"
  export R2_SYNC_LOCK="$dir/r2-sync.lock" R2_ENDPOINT="$ENDPOINT" R2_BUCKET="$OURS_BUCKET"
  restic_setup "$mb" "$dir"
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
  restic_restore "4 restore" "$dir"
  # The restore made its machine the town's writer (one writer per town); the bench's own town takes it back, untimed.
  "$repo/jbang" "$repo/R2Sync.java" --immediate --take-over > "$LOGS/ours-take-over.log" 2>&1
  small_change "$GT_TOWN_ROOT" "$dir/scratch" $((++n))
  ours_sync "5 --immediate (flush)"
  local i
  for ((i = 0; i < cycles; i++)); do
    daemon_cycle "6 $cycles small changes" small_change "$GT_TOWN_ROOT" "$dir/scratch" $((++n))
    restic_sync "6 $cycles small changes"
  done

  local restored v
  restored="ours $(restored_mib "$dir/restore-ours") MiB"
  for v in "${RESTIC_VERSIONS[@]}"; do
    restored+=", restic $v $(restored_mib "$dir/restore-restic-$v") MiB"
  done
  echo
  print_table "$results" "== town $mb MB: $((town_bytes / 1048576)) MiB on disk ($mb MiB git data, $rows Dolt rows);\
 JVM heap ${heap:-as shipped};\
 $(nproc) cores; start through ./jbang (--help) ${jvm_start} s; ours: steps 2, 3, 6 a warm daemon's cycle, 1 and 5 a new process ==" "$cycles"
  echo "restored on disk: $restored (town at restore time $((town_bytes / 1048576)) MiB before changes)"
  echo "load average at the end (other work on this machine skews wall times): $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "ours: $(grep -h "uploaded" "$LOGS/"ours-3_small_change-*.log | tail -n 1 || echo "no 'uploaded' line")"
  [[ -n "${BENCH_KEEP:-}" ]] || rm -rf "$dir/restore-ours" "$dir"/restore-restic-* "$dir/sync-work"
}

# restored_mib DIR: the size of what a restore wrote to DIR, in MiB (0: nothing).
restored_mib() {
  if [[ -d "$1" ]]; then echo $(($(du -sb "$1" | cut -f1) / 1048576)); else echo 0; fi
}

# bench_many PATHS: builds the many-paths town of about PATHS paths, runs its four steps for ours (cold, a new
# process each) and each restic, prints the table, and adds "PATHS:CENSUS:RESULTS" to $growth. The town and
# the restores are deleted after (at 1M paths they are GiBs each) unless BENCH_KEEP is set.
bench_many() {
  local paths="$1" dir="$work/many-$1" t0 t1 census cpaths files dirs links hard bytes
  echo "bench: building the many-paths town: about $paths paths, $checkouts checkouts" >&2
  t0="$EPOCHREALTIME"
  build_many_town "$dir/town" "$dir/scratch" "$paths" "$checkouts"
  t1="$EPOCHREALTIME"
  census="$(python3 "$MANY_PY" census "$dir/town")"
  read -r cpaths files dirs links hard bytes <<< "$census"
  OURS_BUCKET="ours-many-$paths"
  LOGS="$dir/logs"
  mkdir -p "$BLOBS/$OURS_BUCKET" "$LOGS"
  export TOWN_ID=many GT_TOWN_ROOT="$dir/town" R2_WORK_DIR="$dir/sync-work" R2_STATE_DIR="$dir/state"
  export R2_SYNC_LOCK="$dir/r2-sync.lock" R2_ENDPOINT="$ENDPOINT" R2_BUCKET="$OURS_BUCKET"
  restic_setup "many-$paths" "$dir"
  results="$dir/results.tsv"
  : > "$results"

  ours_sync "1 first backup"; restic_sync "1 first backup"
  ours_sync "2 no change"; restic_sync "2 no change"
  many_change "$GT_TOWN_ROOT" "$dir/scratch" 1
  ours_sync "3 small change"; restic_sync "3 small change"
  # A fresh machine: an empty town root, and for restic an empty cache.
  GT_TOWN_ROOT="$dir/restore-ours" R2_STATE_DIR="$dir/restore-state" \
    measure "4 restore" ours "$OURS_BUCKET" "$repo/jbang" "$repo/R2Restore.java"
  restic_restore "4 restore" "$dir"

  local restored v
  restored="ours $(python3 "$MANY_PY" census "$dir/restore-ours" | cut -d' ' -f1)"
  for v in "${RESTIC_VERSIONS[@]}"; do
    restored+=", restic $v $(python3 "$MANY_PY" census "$dir/restore-restic-$v$GT_TOWN_ROOT" | cut -d' ' -f1)"
  done
  echo
  print_table "$results" "== many-paths town, $paths paths asked: $cpaths on disk ($files files, $dirs dirs,\
 $links symlinks, $hard files hard-linked; $((bytes / 1048576)) MiB in files), $checkouts checkouts of one repo\
 (built in $(python3 -c "print(round($t1 - $t0, 1))") s); JVM heap ${heap:-as shipped}; $(nproc) cores;\
 ours: every step a new process ==" 0
  echo "restored paths: $restored (the town had $cpaths before the small change; ours leaves out what its" \
    "skip list names and writes each git dir's objects as packs)"
  echo "load average at the end (other work on this machine skews wall times): $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "ours: $(grep -h "uploaded" "$LOGS/"ours-3_small_change-*.log | tail -n 1 || echo "no 'uploaded' line")"
  growth+=("$paths:$cpaths:$results")
  [[ -n "${BENCH_KEEP:-}" ]] || rm -rf "$dir/town" "$dir/scratch" "$dir/restore-ours" "$dir"/restore-restic-* "$dir/sync-work"
}

_main() {
  local town
  for town in $towns; do
    [[ "$town" == bench || "$town" == many ]] || { echo "bench: BENCH_TOWNS: unknown town '$town' (bench, many)" >&2; exit 1; }
  done
  eval "$(bash "$repo/tools/install-tools.sh")"
  # The restics, the newest (the main peer) first; their versions as they print them (0.18.1, 0.14.0).
  RESTIC_BINS=("$(bash "$repo/tools/install-restic.sh" latest)" "$(bash "$repo/tools/install-restic.sh" 0.14)")
  RESTIC_VERSIONS=()
  local bin
  for bin in "${RESTIC_BINS[@]}"; do
    RESTIC_VERSIONS+=("$("$bin" version | cut -d' ' -f2)")
  done
  PATH="$(dirname "$DOLT_BIN"):$PATH"
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
  if [[ "${BENCH_SEALED:-1}" == 1 ]]; then
    R2_ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)"
    export R2_ENCRYPTION_KEY
  fi
  # Built, their java command lines recorded by the launcher and their class-data archives made, before any
  # step (as on a machine that ran them before, or a baked image).
  "$repo/jbang" "$repo/R2Sync.java" --version > /dev/null 2>&1 || true
  "$repo/jbang" "$repo/R2Restore.java" --version > /dev/null 2>&1 || true
  warm_class_data
  echo "bench: ours ($([[ "${BENCH_SEALED:-1}" == 1 ]] && echo sealed || echo unsealed)) = $(git -C "$repo" log -1 --format='%h %s'); $("${RESTIC_BINS[0]}" version); $("${RESTIC_BINS[1]}" version)"
  local mb paths
  growth=()
  for town in $towns; do
    case "$town" in
      bench)
        for mb in $sizes; do
          bench_size "$mb"
        done
        ;;
      many)
        MANY_PY="$work/many_town.py"
        write_many_town_py "$MANY_PY"
        for paths in $paths_sizes; do
          bench_many "$paths"
        done
        if ((${#growth[@]} > 1)); then
          echo
          print_growth "${growth[@]}"
        fi
        ;;
    esac
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _main "$@"
fi
