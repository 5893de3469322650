#!/usr/bin/env bash
# The main job on an embedded default, no R2 account needed: installs the pinned tools, builds a small
# real Gas Town (a Dolt database, a rig with a shallow bare repo and a worktree, config files), runs one
# sync into a local-directory store (R2_ENDPOINT=file://...), then lists and verifies the snapshot.
#
# Usage: tools/demo.sh [DIR]     (default DIR: /tmp/gastown-r2-demo; it is recreated)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# say MESSAGE: a progress line of the demo itself.
say() {
  printf '\n== %s\n' "$*"
}

# build_town ROOT SCRATCH: a minimal but real town: hq and alpha databases, rig alpha with a shallow
# bare .repo.git cloned from an upstream outside the town, a refinery worktree, settings and runtime.
build_town() {
  local root="$1" scratch="$2"
  mkdir -p "$root/mayor" "$root/settings" "$root/alpha/.runtime" "$root/.dolt-data" "$scratch"
  echo '{"name":"demo"}' > "$root/mayor/town.json"
  echo '{"rigs":["alpha"]}' > "$root/mayor/rigs.json"
  echo '{"theme":"dark"}' > "$root/settings/config.json"
  echo '{"pool":["furiosa"]}' > "$root/alpha/.runtime/namepool-state.json"

  for db in hq alpha; do
    mkdir -p "$root/.dolt-data/$db"
    (cd "$root/.dolt-data/$db" && dolt init > /dev/null &&
      dolt sql -q "create table issues (id int primary key, title varchar(80)); insert into issues values (1, 'first');" &&
      dolt add . && dolt commit -m "first issue" > /dev/null &&
      dolt sql -q "insert into issues values (2, 'uncommitted work')")
  done

  git init -q --bare "$scratch/upstream.git"
  git clone -q "$scratch/upstream.git" "$scratch/work" 2> /dev/null
  for n in 1 2 3; do
    echo "version $n" > "$scratch/work/README"
    git -C "$scratch/work" add README
    git -C "$scratch/work" -c user.name=demo -c user.email=demo@example.invalid commit -q -m "commit $n"
  done
  git -C "$scratch/work" push -q origin HEAD:main
  git -C "$scratch/upstream.git" symbolic-ref HEAD refs/heads/main
  git clone -q --bare --depth 1 --single-branch "file://$scratch/upstream.git" "$root/alpha/.repo.git"
  git -C "$root/alpha/.repo.git" config remote.origin.fetch '+refs/heads/*:refs/remotes/origin/*'
  git -C "$root/alpha/.repo.git" worktree add -q "$root/alpha/refinery/rig" main
  echo "{\"git_url\":\"file://$scratch/upstream.git\",\"default_branch\":\"main\"}" > "$root/alpha/config.json"
}

_main() {
  local dir="${1:-/tmp/gastown-r2-demo}"
  say "installing the pinned tools (JBang, dolt) into ${GASTOWN_R2_CACHE:-~/.cache/gastown-r2}; the first run builds dolt (minutes)"
  eval "$(bash "$repo/tools/install-tools.sh")"
  PATH="$(dirname "$DOLT_BIN"):$PATH"
  export PATH

  rm -rf "$dir"
  mkdir -p "$dir"
  # The demo's own identities, so it never touches your git or dolt configuration.
  export DOLT_ROOT_PATH="$dir/dolt-root" GIT_CONFIG_GLOBAL="$dir/gitconfig"
  mkdir -p "$DOLT_ROOT_PATH"
  dolt config --global --add metrics.disabled true > /dev/null
  dolt config --global --add user.name demo > /dev/null
  dolt config --global --add user.email demo@example.invalid > /dev/null

  say "building a demo town in $dir/town"
  build_town "$dir/town" "$dir/scratch"

  export R2_ENDPOINT="file://$dir/store" TOWN_ID=demo GT_TOWN_ROOT="$dir/town"
  export R2_STATE_DIR="$dir/state" R2_SYNC_LOCK="$dir/r2-sync.lock" R2_WORK_DIR="$dir/work"
  # The town's key: every object in the store is sealed with it (in production: a secret, provisioned like the R2 keys).
  (umask 077 && head -c 32 /dev/urandom | base64 > "$dir/key")
  export R2_ENCRYPTION_KEY_FILE="$dir/key"
  say "one sync into the local store $R2_ENDPOINT"
  "$repo/jbang" "$repo/R2Sync.java" --immediate
  say "the snapshots in the store"
  "$repo/jbang" "$repo/R2Restore.java" --list
  say "a full trial restore of the latest snapshot"
  "$repo/jbang" "$repo/R2Restore.java" --verify
  say "done: the store is $dir/store; restore it with: GT_TOWN_ROOT=$dir/restored R2_ENDPOINT=$R2_ENDPOINT TOWN_ID=demo R2_ENCRYPTION_KEY_FILE=$dir/key $repo/jbang $repo/R2Restore.java"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  _main "$@"
fi
