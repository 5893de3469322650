#!/usr/bin/env bash
# Builds a class-data (CDS) archive for one of the repo's scripts: the classes a run of it listed
# (-XX:DumpLoadedClassList), dumped for the java, classpath and JVM options of its recorded command line.
# Started by ./jbang in the background, at the lowest priority; see with_class_data there.
# Usage: tools/build-class-data.sh CLASSES ARCHIVE JAVA CLASSPATH [JVM OPTION...]
# One build at a time (the lock names its builder; a builder that died leaves it to the next); the archive
# appears by rename, whole or not at all. A build that fails leaves ARCHIVE.failed: not tried again until
# the script is recorded anew.
set -euo pipefail
classes="$1" archive="$2" java_bin="$3" classpath="$4"
shift 4

lock="$archive.building"
if ! mkdir "$lock" 2> /dev/null; then
  # Taken by a builder that is alive, or just taken (no pid yet, for up to a minute): theirs.
  holder="$(cat "$lock/pid" 2> /dev/null || true)"
  if [[ -n "$holder" ]]; then
    ! kill -0 "$holder" 2> /dev/null || exit 0
  elif [[ -z "$(find "$lock" -maxdepth 0 -mmin +1 2> /dev/null)" ]]; then
    exit 0
  fi
fi
echo "$$" > "$lock/pid"
trap 'rm -f "$archive.$$"; rm -rf "$lock"' EXIT

if "$java_bin" "$@" -Xshare:dump -XX:SharedClassListFile="$classes" -XX:SharedArchiveFile="$archive.$$" \
    -classpath "$classpath" > /dev/null 2>&1; then
  mv -f "$archive.$$" "$archive"
else
  : > "$archive.failed"
fi
