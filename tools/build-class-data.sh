#!/usr/bin/env bash
# Builds a class-data (CDS) archive for one of the repo's scripts: the classes a run of it listed
# (-XX:DumpLoadedClassList), dumped for the JVM, JVM options and classpath of its recorded command line.
# Started by ./jbang in the background, at the lowest priority; see with_class_data there.
# Usage: tools/build-class-data.sh COMMAND CLASSES ARCHIVE
# One build at a time (a lock older than 10 minutes is a build that died); the archive appears by rename,
# whole or not at all. A build that fails leaves ARCHIVE.failed: not tried again until the script is
# recorded anew.
set -euo pipefail
command="$1" classes="$2" archive="$3"

if ! mkdir "$archive.building" 2> /dev/null; then
  [[ -n "$(find "$archive.building" -maxdepth 0 -mmin +10 2> /dev/null)" ]] || exit 0
fi
trap 'rm -f "$archive.$$"; rmdir "$archive.building" 2> /dev/null || true' EXIT

java_bin="${command%% *}"
jvm_options="$(printf '%s' "$command" | sed -n 's/^[^ ]* \(.*\) -classpath .*/\1/p')"
classpath="$(printf '%s' "$command" | sed -n "s/^[^ ]* .*-classpath \\([^ ']*\\) .*/\\1/p")"
# shellcheck disable=SC2086 # the recorded JVM options, split as the recorded command line splits them
if "$java_bin" $jvm_options -Xshare:dump -XX:SharedClassListFile="$classes" -XX:SharedArchiveFile="$archive.$$" \
    -classpath "$classpath" > /dev/null 2>&1; then
  mv -f "$archive.$$" "$archive"
else
  : > "$archive.failed"
fi
