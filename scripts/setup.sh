#!/usr/bin/env bash
# One-shot, idempotent environment setup for laion_spark.
#  - checks Java (Spark 4 needs 17+) and Maven
#  - creates .venv and installs the package with its dev extras (pip cache keeps torch)
#  - builds laion-spark-native, the compiled WAT extractor (Rust, native/), into .venv
#  - fetches the Delta Lake jars from Maven Central into a local cache, so later runs are offline
#  - installs Chromium + chromedriver (Debian) for the web page's browser test
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
JAR_DIR=${LAION_SPARK_JAR_DIR:-$HOME/.cache/laion_spark/jars}
DELTA_VERSION=4.3.1
SPARK_MM=4.1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
# pip's and the build backends' chatter goes to a log; it is shown only when a step fails
LOG=${SETUP_LOG:-$VENV.setup.log}
quiet() { "$@" >>"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; return 1; }; }
die() { printf '\033[31m[setup] ERROR:\033[0m %s\n' "$*" >&2; exit 1; }

command -v java >/dev/null || die "Java not found. Spark 4 needs a JDK 17 or 21 (Debian: apt-get install openjdk-17-jdk-headless)."
jv=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
[ "${jv:-0}" -ge 17 ] || die "Java $jv found; Spark 4 needs Java 17 or newer."
command -v mvn >/dev/null || die "Maven (mvn) not found; it fetches the Delta Lake jars (Debian: apt-get install maven)."
$PY -c 'import sys; assert sys.version_info >= (3, 10)' || die "Python 3.10+ needed ($PY)."

stamp="$VENV/.laion-spark-installed"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  say "creating $VENV and installing laion_spark[all,dev] (first time downloads torch; pip caches it)"
  [ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
  quiet "$VENV/bin/pip" install --upgrade pip wheel setuptools || die "could not upgrade pip (log: $LOG)"
  quiet "$VENV/bin/pip" install -e ".[all,dev]" || die "could not install laion_spark (log: $LOG)"
  touch "$stamp"
else
  say "$VENV up to date"
fi

# the compiled extract path (Rust, native/): rebuilt when its sources change
command -v cargo >/dev/null || die "Rust's cargo not found; it builds laion-spark-native, the compiled WAT extractor in native/ (https://rustup.rs, or Debian: apt-get install cargo)."
native_stamp="$VENV/.laion-spark-native-installed"
if [ ! -f "$native_stamp" ] || [ -n "$(find native -newer "$native_stamp" -not -path 'native/target*' -print -quit)" ]; then
  say "building laion-spark-native (Rust, first time fetches its crates from crates.io)"
  quiet "$VENV/bin/pip" install ./native || die "could not build native/ (the cargo output is above; log: $LOG)"
  touch "$native_stamp"
fi

mkdir -p "$JAR_DIR"
for art in "io.delta:delta-spark_${SPARK_MM}_2.13:${DELTA_VERSION}" "io.delta:delta-storage:${DELTA_VERSION}"; do
  a=${art#*:}; a=${a%%:*}
  if [ ! -f "$JAR_DIR/$a-${DELTA_VERSION}.jar" ]; then
    say "fetching $art from Maven Central"
    mvn -q dependency:copy -Dartifact="$art" -DoutputDirectory="$JAR_DIR" \
      || die "could not fetch $art with Maven (is Maven Central reachable?)"
  fi
done
say "Delta jars in $JAR_DIR"

if [ -z "${LAION_SPARK_SKIP_BROWSER:-}" ] && { ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing chromium + chromium-driver (browser test of the search page)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || die "apt-get could not install chromium/chromium-driver"
  else
    die "chromium and chromedriver are needed for the web page test; install them (Debian: chromium chromium-driver)."
  fi
fi
say "ready. Activate with: source $VENV/bin/activate"
