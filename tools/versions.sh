# shellcheck shell=bash disable=SC2034 # sourced: the variables are used by the scripts that source this file
# Pinned versions of every tool the project installs, and the cache they live in (outside the repo).
# Sourced by the installers, the launcher and the test runner: change a version here and only here.

GASTOWN_R2_CACHE="${GASTOWN_R2_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gastown-r2}"

# dolt 1.86.4 (commit 011a27ff4303, 2026-04-24). The go/v* tags are ancient, so dolt is installed by
# pseudo-version; the Go module proxy reachable here serves this one and refuses the v2.x commits.
# gt requires dolt >= 1.82.4.
DOLT_VERSION=1.86.4
DOLT_MODULE_VERSION=v0.40.5-0.20260424001550-011a27ff4303

# JBang: Maven Central, as these machines reach it, serves dev.jbang:jbang-cli 0.127.18 and 0.132.1 only (0.143.0:
# not found), so the pin stays until it does. At the bump: from 0.135 on JBANG_JAVA_OPTIONS reaches JBang's own JVM
# only and JBANG_APP_JAVA_OPTIONS the script's; ./jbang's launch key covers every JBANG_* variable already.
JBANG_VERSION=0.132.1
S3PROXY_VERSION=4.1.0
# restic for tools/bench.sh's side-by-side runs: the newest release that builds here (go install from the module
# proxy), beside Debian's 0.14 (apt), which install-restic.sh keeps as the older peer.
RESTIC_VERSION=0.18.1

DOLT_HOME="$GASTOWN_R2_CACHE/dolt-$DOLT_VERSION"
JBANG_HOME="$GASTOWN_R2_CACHE/jbang-$JBANG_VERSION"
S3PROXY_JAR="$GASTOWN_R2_CACHE/s3proxy-$S3PROXY_VERSION/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar"
RESTIC_HOME="$GASTOWN_R2_CACHE/restic-$RESTIC_VERSION"
