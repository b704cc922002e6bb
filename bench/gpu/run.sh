#!/usr/bin/env bash
# Prepares what the GPU machine needs for bench/gpu/overhead.py and prints the device command.
#  .bundle/app.tar.xz  the sidecar built without the DJL native jar (-Dno-djl-native), with the
#                      other platforms' native libraries stripped from sqlite-jdbc, jna, pytorch-jni
#  .bundle/jre.tar.xz  a jlink-ed Java 17 runtime (the GPU machine has no Java)
#  .whl/               grpcio + protobuf wheels for CPython 3.12 manylinux (the GPU machine's python3)
#  .whl-prof/          py-spy's wheel, for gil-profile-cmd.sh only: carried with the other two the
#                      working tree passed the device's 64 MiB limit (twenty-second pass)
# The folders are git-ignored; name .bundle and .whl in the device call's carry. Together < 64 MiB.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD=${BUILD:-/tmp/gpu-build}
JDK=${JDK:-/usr/lib/jvm/java-17-openjdk-amd64}
MODULES=java.base,java.logging,java.naming,java.sql,java.management,jdk.unsupported,jdk.crypto.ec,java.xml,java.net.http,java.instrument,jdk.zipfs,jdk.management,java.security.jgss

rm -rf "$BUILD" && mkdir -p "$BUILD"
(cd "$REPO" && tar --exclude=./target --exclude=./.git --exclude=./.bundle --exclude=./.whl -cf - .) | tar -xf - -C "$BUILD"
(cd "$BUILD" && ./mvnw -q -B -DskipTests -Dno-djl-native package)
python3 - "$BUILD/target/quarkus-app/lib/main" <<'PY'
import glob, os, sys, zipfile
os.chdir(sys.argv[1])
def strip(pattern, drop):
    for jar in glob.glob(pattern):
        src = zipfile.ZipFile(jar); tmp = jar + ".tmp"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
            for i in src.infolist():
                if not drop(i.filename):
                    out.writestr(i, src.read(i.filename))
        src.close(); os.replace(tmp, jar)
strip("org.xerial.sqlite-jdbc-*.jar", lambda f: f.startswith("org/sqlite/native/") and not f.endswith("/")
      and not f.startswith("org/sqlite/native/Linux/x86_64/"))
strip("ai.djl.pytorch.pytorch-jni-*.jar", lambda f: f.startswith("jnilib/") and f.endswith(".so"))
strip("net.java.dev.jna.jna-*.jar", lambda f: f.startswith("com/sun/jna/") and f.count("/") == 4
      and "/linux-x86-64/" not in f and not f.endswith(".class"))
PY
rm -rf ${JRE_DIR:-/tmp/gpu-jre}
# --compress=0 + xz is 13 MB; --compress=2 (zip inside the image, which xz can't shrink) was 24 MB.
"$JDK/bin/jlink" --add-modules "$MODULES" --strip-debug --no-header-files --no-man-pages --compress=0 --output ${JRE_DIR:-/tmp/gpu-jre}
# The jlink-ed runtime must start the app here first.
rm -f /tmp/gpu-check.db /tmp/gpu-check.sock
${JRE_DIR:-/tmp/gpu-jre}/bin/java -Dtrainguard.journal.path=/tmp/gpu-check.db -Dtrainguard.listen.socket=/tmp/gpu-check.sock \
  -Dtrainguard.listen.port=7477 -Dquarkus.management.port=9007 -jar "$BUILD/target/quarkus-app/quarkus-run.jar" > /tmp/gpu-check.log 2>&1 &
PID=$!
for i in $(seq 1 90); do sleep 1; curl -sf http://127.0.0.1:9007/q/health/ready >/dev/null && break; done
curl -sf http://127.0.0.1:9007/q/health/ready >/dev/null || { kill $PID; tail -20 /tmp/gpu-check.log; exit 1; }
kill $PID
mkdir -p "$REPO/.bundle" "$REPO/.whl" "$REPO/.whl-prof"
rm -f "$REPO"/.bundle/*
tar -cJf "$REPO/.bundle/jre.tar.xz" -C ${JRE_DIR:-/tmp/gpu-jre} .
tar -cJf "$REPO/.bundle/app.tar.xz" -C "$BUILD/target" quarkus-app
rm -f "$REPO"/.whl/grpcio-* "$REPO"/.whl/protobuf-* "$REPO"/.whl/py_spy-* "$REPO"/.whl-prof/py_spy-*
wheels() {  # dest, packages: CPython 3.12 manylinux wheels
  local dest=$1; shift
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@"
}
wheels "$REPO/.whl" grpcio==1.85.3 protobuf==7.36.2
wheels "$REPO/.whl-prof" py-spy==0.4.3
du -sh "$REPO/.bundle" "$REPO/.whl"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard | du -ch --files0-from=- | tail -1)
echo
echo 'device call:  run(command="bash bench/gpu/device-cmd.sh", carry=[".bundle", ".whl"], timeout_s=600)'
echo '              (env: BATCHES="8 16" ROUNDS=7 STEPS=30; results land in $OUT)'
