"""Starts the sidecar jar as a child process (tests, examples, local runs). Not used in production,
where the sidecar is its own container. Works pip-installed: the jar comes from an explicit
``Sidecar(jar=...)`` or ``$TRAINGUARD_JAR``; only a source checkout also finds
``<repo>/target/quarkus-app/quarkus-run.jar`` by itself."""
import json
import re
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_jar():
    """$TRAINGUARD_JAR, else the jar of the source checkout this package sits in (which may not exist)."""
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.abspath(os.path.join(here, "..", "..", ".."))
    return os.environ.get("TRAINGUARD_JAR") or os.path.join(repo, "target", "quarkus-app", "quarkus-run.jar")


def find_jar(jar=None):
    """The sidecar jar to run, or a FileNotFoundError that says how to provide it."""
    path = jar or default_jar()
    if os.path.isfile(path):
        return os.path.abspath(path)  # the JVM runs in the sidecar's workdir
    origin = "jar=" if jar else ("$TRAINGUARD_JAR" if os.environ.get("TRAINGUARD_JAR") else "the source checkout")
    raise FileNotFoundError(
        f"trainguard sidecar jar not found at {path} (from {origin}). Build it in the trainguard repository with "
        f"'./mvnw package -DskipTests' and set TRAINGUARD_JAR=<repo>/target/quarkus-app/quarkus-run.jar, or pass "
        f"Sidecar(jar=...); or run the sidecar yourself and give Guard target='host:port'.")


class Sidecar:
    """``with Sidecar() as sc: Guard(..., target=sc.target)``. ``sc.kill()`` simulates a crash."""

    def __init__(self, jar=None, workdir=None, port=None, extra_props=None, java="java"):
        self.jar = find_jar(jar)
        self.workdir = workdir or tempfile.mkdtemp(prefix="trainguard-sidecar-")
        self.port = port or free_port()
        self._fixed_port = port is not None
        # Health and metrics are on Quarkus' management interface (9000 by default): one free port per sidecar.
        self.management_port = free_port()
        self.socket_path = os.path.join(self.workdir, "tg.sock")
        self.checkpoint_root = os.path.join(self.workdir, "checkpoints")
        os.makedirs(self.checkpoint_root, exist_ok=True)
        self.extra_props = dict(extra_props or {})
        self.java = java
        self.proc = None

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"

    @property
    def unix_target(self):
        return "unix://" + self.socket_path

    def start(self, timeout=90.0):
        props = {"trainguard.listen.port": self.port, "trainguard.listen.socket": self.socket_path,
                 "trainguard.journal.path": os.path.join(self.workdir, "journal.db"),
                 "trainguard.checkpoint.roots": self.checkpoint_root,
                 "quarkus.management.port": self.management_port}
        props.update(self.extra_props)
        self.log_path = os.path.join(self.workdir, "sidecar.log")
        self._log = open(self.log_path, "ab")
        end = time.monotonic() + timeout
        for attempt in range(4):
            cmd = [self.java, "-XX:+UseSerialGC", "-Xmx512m", "-XX:TieredStopAtLevel=1"] + \
                  [f"-D{k}={v}" for k, v in props.items()] + ["-jar", self.jar]
            self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.workdir)
            while self.proc.poll() is None and time.monotonic() < end:
                # ready, and ready because of this process: another sidecar given the same free port
                # (free_port() closes it before the JVM binds) would answer the checks itself
                if self._listening() and self._ready() and self._grpc_warm(end):
                    return self
                time.sleep(0.2)
            if self.proc.poll() is None:
                break
            if re.search(r"already in use|seems to be in use", self.tail(20000)) and not self._fixed_port:
                props["trainguard.listen.port"] = self.port = free_port()  # taken meanwhile: other ports
                props["quarkus.management.port"] = self.management_port = free_port()
                continue
            # An older sidecar build rejects properties it does not know: drop those and retry.
            unknown = re.findall(r"SRCFG00050: (\S+) in \S+ does not map", self.tail(20000))
            if not unknown or not any(u in props for u in unknown):
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}; log: {self.tail()}")
            for u in unknown:
                props.pop(u, None)
        self.kill()
        raise RuntimeError(f"sidecar not ready after {timeout}s; log: {self.tail()}")

    def _grpc_warm(self, end):
        """One real gRPC call, so that the JVM's first-call warm-up is not charged to a test's deadline."""
        from .transport import Transport
        from ._proto.trainguard.v1 import trainguard_pb2 as pb
        import grpc
        t = Transport(self.target, deadline=max(1.0, end - time.monotonic()))
        try:
            t.call("GetRun", pb.GetRunRequest(run_id="__warmup__"))
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return False
        finally:
            t.close()
        return True

    def _listening(self):
        """Whether this process logged that it listens on its port (Quarkus's start-up line)."""
        return f"Listening on: http://127.0.0.1:{self.port}" in self.tail(20000)

    def _ready(self):
        for port in (self.management_port, self.port):  # a build without the management interface: main port
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/q/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return True
            except Exception:
                pass
        return False

    def tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def get(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def run_info(self, run_id):
        return self.get(f"/api/runs/{run_id}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
