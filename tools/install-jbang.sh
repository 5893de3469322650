#!/usr/bin/env bash
# Installs JBang (dev.jbang:jbang-cli, pinned) and its runtime jars from Maven Central into the cache.
# The official installer downloads from GitHub, which these machines cannot reach. Prints the lib dir.
# Idempotent, and safe when two first runs race: each resolves into its own staging dir and the
# rename into place is the "complete" marker.
set -euo pipefail
# shellcheck source=tools/versions.sh
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

lib_dir="$JBANG_HOME/lib"
if [[ ! -d "$lib_dir" ]]; then
  echo "install-jbang: resolving dev.jbang:jbang-cli:$JBANG_VERSION from Maven Central (once)" >&2
  mkdir -p "$JBANG_HOME"
  staging="$(mktemp -d "$JBANG_HOME/.resolve.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  # Pins beyond jbang-cli's own pom: with the gson 2.10.1 it names, catalog aliases silently vanish.
  cat > "$staging/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.gastown-r2</groupId><artifactId>jbang-bootstrap</artifactId><version>1</version>
  <dependencyManagement><dependencies>
    <dependency><groupId>com.google.code.gson</groupId><artifactId>gson</artifactId><version>2.13.1</version></dependency>
    <dependency><groupId>commons-codec</groupId><artifactId>commons-codec</artifactId><version>1.18.0</version></dependency>
    <dependency><groupId>org.apache.commons</groupId><artifactId>commons-lang3</artifactId><version>3.16.0</version></dependency>
    <dependency><groupId>org.ow2.asm</groupId><artifactId>asm</artifactId><version>9.8</version></dependency>
  </dependencies></dependencyManagement>
  <dependencies>
    <dependency><groupId>dev.jbang</groupId><artifactId>jbang-cli</artifactId><version>$JBANG_VERSION</version></dependency>
  </dependencies>
</project>
POM
  mvn -q -B -f "$staging/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$staging/lib" >&2
  mv "$staging/lib" "$lib_dir" 2>/dev/null || [[ -d "$lib_dir" ]]
fi
echo "$lib_dir"
