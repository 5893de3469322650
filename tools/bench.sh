#!/usr/bin/env bash
# Benchmark: sync, unchanged re-sync and restore of a town holding BENCH_MB of git data and a Dolt table of
# BENCH_ROWS rows, against a real S3 server (S3Proxy) on loopback, with the JVM heap capped at BENCH_HEAP to
# show that nothing is held whole in memory. Prints wall time, throughput and peak RSS of each step.
#
# Usage: BENCH_MB=300 BENCH_ROWS=200000 BENCH_HEAP=256m tools/bench.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mb="${BENCH_MB:-300}"
rows="${BENCH_ROWS:-200000}"
heap="${BENCH_HEAP:-256m}"

# build_town ROOT SCRATCH: hq with a big table, rig alpha whose shallow .repo.git holds $mb MiB of random data.
build_town() {
  local root="$1" scratch="$2"
  mkdir -p "$root/mayor" "$root/.dolt-data/hq" "$scratch/work"
  echo '{"name":"bench"}' > "$root/mayor/town.json"
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

# start_s3 DIR: S3Proxy with a filesystem store on a free loopback port; sets S3_PID and R2_* env.
start_s3() {
  local dir="$1" port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  mkdir -p "$dir/blobs/bench"
  cat > "$dir/s3proxy.conf" <<CONF
s3proxy.endpoint=http://127.0.0.1:$port
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=bench
s3proxy.credential=bench-secret
jclouds.provider=filesystem
jclouds.filesystem.basedir=$dir/blobs
CONF
  java -jar "$S3PROXY_JAR" --properties "$dir/s3proxy.conf" > "$dir/s3proxy.log" 2>&1 &
  S3_PID=$!
  export R2_ENDPOINT="http://127.0.0.1:$port" R2_ACCESS_KEY_ID=bench R2_SECRET_ACCESS_KEY=bench-secret R2_BUCKET=bench
  local tries=0
  until (echo > "/dev/tcp/127.0.0.1/$port") 2> /dev/null; do
    ((tries++ < 100)) || { echo "bench: S3Proxy did not start" >&2; exit 1; }
    sleep 0.1
  done
}

# measure LABEL BYTES CMD...: runs CMD under /usr/bin/time and prints one result line.
measure() {
  local label="$1" bytes="$2"
  shift 2
  local stats="$work/time.txt"
  /usr/bin/time -f '%e %M' -o "$stats" "$@" 2> "$work/$label.log" || { cat "$work/$label.log" >&2; exit 1; }
  read -r secs rss_kb < "$stats"
  python3 -c "
secs, rss, mib = float('$secs'), int('$rss_kb') / 1024, $bytes / 1048576
print(f'{\"$label\":<22} {secs:8.1f} s {mib / max(secs, 0.001):9.1f} MiB/s {rss:9.0f} MiB peak RSS')"
}

_main() {
  eval "$(bash "$repo/tools/install-tools.sh")"
  PATH="$(dirname "$DOLT_BIN"):$PATH"
  work="$(mktemp -d "${TMPDIR:-/tmp}/gastown-r2-bench.XXXXXX")"
  trap 'kill "${S3_PID:-0}" 2> /dev/null || true; rm -rf "$work"' EXIT
  export DOLT_ROOT_PATH="$work/dolt-root" GIT_CONFIG_GLOBAL="$work/gitconfig"
  git config --global user.name bench && git config --global user.email bench@example.invalid
  mkdir -p "$DOLT_ROOT_PATH"
  dolt config --global --add metrics.disabled true > /dev/null
  dolt config --global --add user.name bench > /dev/null && dolt config --global --add user.email bench@example.invalid > /dev/null

  echo "bench: building a town with $mb MiB of git data and $rows Dolt rows" >&2
  build_town "$work/town" "$work/scratch"
  start_s3 "$work/s3"
  export TOWN_ID=bench GT_TOWN_ROOT="$work/town" R2_WORK_DIR="$work/sync-work" R2_STATE_DIR="$work/state"
  export R2_SYNC_LOCK="$work/r2-sync.lock" R2_NO_PROGRESS=1 JAVA_TOOL_OPTIONS="-Xmx$heap"
  "$repo/jbang" build "$repo/R2Sync.java" "$repo/R2Restore.java" > /dev/null 2>&1 || true
  local bytes
  bytes="$(du -sb "$work/town" | cut -f1)"

  echo "town: $((bytes / 1048576)) MiB on disk; JVM heap capped at $heap; $(nproc) cores"
  measure "sync (first)" "$bytes" "$repo/jbang" "$repo/R2Sync.java" --immediate
  measure "sync (unchanged)" "$bytes" "$repo/jbang" "$repo/R2Sync.java" --immediate
  GT_TOWN_ROOT="$work/restored" measure "restore" "$bytes" "$repo/jbang" "$repo/R2Restore.java"
  grep -h "uploaded" "$work/sync (unchanged).log" | sed 's/^/  second sync: /'
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _main "$@"
fi
