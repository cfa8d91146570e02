#!/usr/bin/env bash
# One-shot, idempotent environment setup for laion_spark.
#  - checks Java (Spark 4 needs 17+) and Maven
#  - creates .venv and installs the package with its dev extras (pip cache keeps torch)
#  - builds laion-spark-native, the compiled WAT extractor (Rust, native/), into .venv
#  - fetches the Delta Lake jars from Maven Central into a local cache, so later runs are offline
#  - fetches hadoop-aws + the AWS SDK modules it needs (s3a://, ~12 MB, not the 640 MB SDK
#    bundle) into the same cache; sessions put them on the classpath only for S3 paths
#  - builds the local driver JVM's class archive (a faster Spark start; laion_spark/jvm.py)
#  - installs Chromium + chromedriver (Debian) for the web page's browser test
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
JAR_DIR=${LAION_SPARK_JAR_DIR:-$HOME/.cache/laion_spark/jars}
DELTA_VERSION=4.3.1
SPARK_MM=4.1
# hadoop-aws must be the Hadoop version of pyspark's hadoop-client jars; the SDK version is the
# one that hadoop-aws release was built against (its pom's software.amazon.awssdk:bundle)
HADOOP_AWS_VERSION=3.4.2
AWS_SDK_VERSION=2.29.52

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

# s3a://: hadoop-aws and only the SDK modules it loads (s3, s3-transfer-manager, sts and their
# dependencies), without the jars pyspark already ships (netty, httpclient, slf4j, commons-*)
hadoop_jar=$(ls "$VENV"/lib/python*/site-packages/pyspark/jars/hadoop-client-api-*.jar 2>/dev/null | head -1 || true)
hadoop_version=$(basename "${hadoop_jar:-hadoop-client-api-$HADOOP_AWS_VERSION.jar}" .jar)
hadoop_version=${hadoop_version#hadoop-client-api-}
[ "$hadoop_version" = "$HADOOP_AWS_VERSION" ] \
  || die "pyspark ships Hadoop $hadoop_version but setup.sh fetches hadoop-aws $HADOOP_AWS_VERSION: set HADOOP_AWS_VERSION (and AWS_SDK_VERSION to what that hadoop-aws pom names) in scripts/setup.sh"
S3_DIR="$JAR_DIR/s3"
s3_stamp="$S3_DIR/.complete-$HADOOP_AWS_VERSION-$AWS_SDK_VERSION"
if [ ! -f "$s3_stamp" ]; then
  say "fetching hadoop-aws $HADOOP_AWS_VERSION + AWS SDK $AWS_SDK_VERSION modules from Maven Central (s3a://)"
  pom_dir=$(mktemp -d)
  sdk() { printf '<dependency><groupId>software.amazon.awssdk</groupId><artifactId>%s</artifactId><version>%s</version></dependency>' "$1" "$AWS_SDK_VERSION"; }
  cat >"$pom_dir/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>
  <groupId>laion_spark</groupId><artifactId>s3-jars</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.hadoop</groupId><artifactId>hadoop-aws</artifactId><version>$HADOOP_AWS_VERSION</version>
      <exclusions>
        <exclusion><groupId>software.amazon.awssdk</groupId><artifactId>bundle</artifactId></exclusion>
        <exclusion><groupId>org.wildfly.openssl</groupId><artifactId>wildfly-openssl</artifactId></exclusion>
      </exclusions></dependency>
    $(sdk s3) $(sdk s3-transfer-manager) $(sdk sts)
  </dependencies></project>
EOF
  rm -rf "$S3_DIR.partial"
  quiet mvn -q -f "$pom_dir/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$S3_DIR.partial" \
      -DexcludeGroupIds=io.netty,org.apache.httpcomponents,org.slf4j,commons-logging,commons-codec \
    || die "could not fetch hadoop-aws and the AWS SDK modules with Maven (log: $LOG)"
  rm -rf "$pom_dir" "$S3_DIR" && mv "$S3_DIR.partial" "$S3_DIR" && touch "$s3_stamp"
fi
say "S3 (hadoop-aws) jars in $S3_DIR"

# the local driver JVM's class archive (JDK class data sharing, laion_spark/jvm.py): a local
# session then starts in about half the time; rebuilt when Java, pyspark or the jars change
if [ -z "${LAION_SPARK_SKIP_CLASS_ARCHIVE:-}" ]; then
  quiet "$VENV/bin/python" -m laion_spark.jvm || say "no class archive (log: $LOG); Spark starts without it"
fi

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
