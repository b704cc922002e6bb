"""Shared plumbing for the gRPC benchmarks: start/stop a sidecar, hand-made stubs, realistic reports.

Runs on Debian's python3 (grpcio 1.51, protobuf 3.21) and on current grpcio alike: only the generic
unary_unary / stream_stream channel API is used, like clients/python/trainguard/transport.py.
"""
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "clients", "python"))

from google.protobuf import duration_pb2  # noqa: E402

from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb  # noqa: E402

SERVICE = "/trainguard.v1.TrainGuardService/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
APP_SRC = os.environ.get("TG_APP_SRC", os.path.join(REPO, "target", "quarkus-app"))
APP_DIR = os.environ.get("TG_APP_DIR", "/tmp/bench-app")

# 14 watched modules of a small transformer, in forward order.
MODULES = ["embed"] + [f"blocks.{i}.{part}" for i in range(6) for part in ("attn", "mlp")] + ["lm_head"]
assert len(MODULES) == 14


def ensure_app():
    """Copies the packaged app (default: this checkout's target/quarkus-app, TG_APP_SRC to change)
    into APP_DIR, so a rebuild while a benchmark runs does not pull the jar from under it; copied
    again whenever the source jar is newer than the copy."""
    src, dst = os.path.join(APP_SRC, "quarkus-run.jar"), os.path.join(APP_DIR, "quarkus-run.jar")
    if not os.path.exists(src):
        sys.exit(f"{src} missing: build it first (./mvnw -B -ntp package -DskipTests)")
    if not os.path.exists(dst) or os.path.getmtime(src) > os.path.getmtime(dst):
        shutil.rmtree(APP_DIR, ignore_errors=True)
        shutil.copytree(APP_SRC, APP_DIR)
    return dst


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Sidecar:
    """One sidecar JVM in a fresh temp dir (its own journal and socket)."""

    def __init__(self, jvm_args=(), extra_props=None):
        self.jar = ensure_app()
        self.tmp = tempfile.mkdtemp(prefix="tg-bench-")
        self.port = free_port()
        self.management_port = free_port()  # health + metrics: Quarkus management interface
        self.socket = os.path.join(self.tmp, "tg.sock")
        self.journal = os.path.join(self.tmp, "journal.db")
        props = {"trainguard.listen.port": self.port, "trainguard.listen.socket": self.socket,
                 "trainguard.journal.path": self.journal, "quarkus.management.port": self.management_port}
        props.update(extra_props or {})
        self.journal = str(props["trainguard.journal.path"])
        self.cmd = ["java", *jvm_args] + [f"-D{k}={v}" for k, v in props.items()] + ["-jar", self.jar]
        self.proc = None
        self.ready_ms = None

    def start(self, timeout=60):
        self.log = open(os.path.join(self.tmp, "sidecar.log"), "wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, cwd=self.tmp, stdout=self.log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{self.management_port}/q/health/ready"
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}; log: {self.tmp}/sidecar.log")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        self.ready_ms = (time.monotonic() - t0) * 1000.0
                        return self
            except Exception:
                pass
            time.sleep(0.01)
        raise RuntimeError("sidecar not ready in time")

    @property
    def tcp(self):
        return f"127.0.0.1:{self.port}"

    @property
    def unix(self):
        return "unix://" + self.socket

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return -1

    def rest(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
            return json.loads(r.read())

    def journaled_steps(self, run_id):
        """COUNT(*) of the steps table, read from the WAL database directly (not exposed over REST)."""
        con = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute("SELECT COUNT(*) FROM steps WHERE run_id=?", (run_id,)).fetchone()[0]
        finally:
            con.close()

    def journaled_actions(self, run_id):
        con = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=10)
        try:
            return dict(con.execute("SELECT action, COUNT(*) FROM steps WHERE run_id=? GROUP BY action", (run_id,)))
        finally:
            con.close()

    def stop(self, keep=False):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)


def stubs(channel):
    """Hand-made callables (no generated *_pb2_grpc)."""
    ident = lambda b: b  # noqa: E731
    return {
        "Check": channel.unary_unary(HEALTH_CHECK, request_serializer=ident, response_deserializer=ident),
        "OpenRun": channel.unary_unary(SERVICE + "OpenRun", request_serializer=pb.OpenRunRequest.SerializeToString,
                                       response_deserializer=pb.OpenRunResponse.FromString),
        "ReportStep": channel.unary_unary(SERVICE + "ReportStep",
                                          request_serializer=pb.ReportStepRequest.SerializeToString,
                                          response_deserializer=pb.ReportStepResponse.FromString),
        "GetRun": channel.unary_unary(SERVICE + "GetRun", request_serializer=pb.GetRunRequest.SerializeToString,
                                      response_deserializer=pb.GetRunResponse.FromString),
        "Heartbeat": channel.unary_unary(SERVICE + "Heartbeat",
                                         request_serializer=pb.HeartbeatRequest.SerializeToString,
                                         response_deserializer=pb.HeartbeatResponse.FromString),
        "StreamSteps": channel.stream_stream(SERVICE + "StreamSteps",
                                             request_serializer=pb.StreamStepsRequest.SerializeToString,
                                             response_deserializer=pb.StreamStepsResponse.FromString),
    }


def proc_cpu_s(pid):
    """Seconds of CPU process ``pid`` has used (utime + stime)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health_serving(resp_bytes):
    # HealthCheckResponse: field 1 (status) varint; SERVING = 1 -> b"\x08\x01"
    return resp_bytes == b"\x08\x01"


def open_request(run_id, rank=0, world_size=1):
    """A realistic OpenRun for a bf16-autocast AdamW run with 14 watched modules and a warn-only preflight."""
    groups = [pb.ParameterGroup(name="decay", parameter_count=110_000_000, dtype=pb.D_TYPE_FLOAT32, trainable=True),
              pb.ParameterGroup(name="no_decay", parameter_count=150_000, dtype=pb.D_TYPE_FLOAT32, trainable=True)]
    return pb.OpenRunRequest(
        run_id=run_id, rank=rank, world_size=world_size, trainer_instance=f"bench-{os.getpid()}",
        policy=pb.Policy(preflight_mode=pb.AUDIT_MODE_WARN),
        model=pb.ModelDescription(parameter_groups=groups, watched_modules=MODULES, parameter_count=110_150_000),
        precision=pb.PrecisionSetup(parameter_dtype=pb.D_TYPE_FLOAT32, autocast_dtype=pb.D_TYPE_BFLOAT16,
                                    optimizer_name="AdamW", optimizer_eps=1e-8, loss_scaler=False,
                                    master_weights=False, clipping_configured=True, clipping_effective=True,
                                    framework="torch", optimizer_state_dtypes=[pb.D_TYPE_FLOAT32]))


def _noise(x):
    """Cheap deterministic pseudo-noise in [-0.5, 0.5) (random.Random(seed) costs ~50 µs a call)."""
    v = math.sin(x * 12.9898 + 78.233) * 43758.5453
    return v - math.floor(v) - 0.5


def step_values(step, seed=0):
    """Deterministic, healthy-looking numbers for one step: the same for every rank (all-reduced grads)."""
    loss = 2.0 + 3.0 * math.exp(-step / 5000.0) + 0.04 * _noise(step + seed)
    grad_norm = 0.45 + 0.02 * _noise(step * 3 + seed + 1)  # below the default FIXED clip of 1.0: APPLY
    lr = 3e-4 * min(1.0, (step + 1) / 1000.0)
    return loss, grad_norm, lr


_MAX_ABS = [1.0 + 0.1 * i for i in range(14)]
_STEP_TIME = duration_pb2.Duration(nanos=250_000_000)


def step_report(run_id, rank, step, seed=0):
    loss, grad_norm, lr = step_values(step, seed)
    wobble = 1.0 + 0.2 * _noise(step * 7 + rank)
    return pb.StepReport(
        run_id=run_id, rank=rank, step=step, loss=loss, grad_norm=grad_norm, learning_rate=lr, loss_scale=1.0,
        group_grad_norms=[grad_norm * 0.99, grad_norm * 0.14],
        module_stats=pb.ModuleStats(finite=[True] * 14, max_abs=[m * wobble for m in _MAX_ABS]),
        step_time=_STEP_TIME)


def pct(sorted_vals, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(math.ceil(p / 100.0 * len(sorted_vals))) - 1))
    return sorted_vals[k]


def save_results(res, path):
    """Stamps the load average at the end into res["machine"] (when there is one) and writes the
    JSON to path (when given): what every benchmark here does last."""
    if "machine" in res:
        res["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=1)


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    import grpc
    import google.protobuf
    return {"nproc": os.cpu_count(), "cpu": model, "ram_gib": round(mem_kib / 1048576, 1),
            "python": sys.version.split()[0], "python_exe": sys.executable, "grpcio": grpc.__version__,
            "protobuf": google.protobuf.__version__, "loadavg": open("/proc/loadavg").read().split()[:3], "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "java": subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]}
