#!/usr/bin/env python3
"""The packaged sidecar verifying multi-GB checkpoints: RSS idle (DJL not loaded) and during
verification, the progress REST shows while it runs, and the time from RegisterCheckpoint to VERIFIED.

Starts the fast-jar as the README does (java --add-modules jdk.incubator.vector -jar ...) with
trainguard.checkpoint.roots=DIR, registers the 4 GiB fp32 and 2 GiB bf16 files of run.sh (twice
each: the first after a fresh start, then again), samples VmRSS (and its RssAnon/RssFile parts) every 50 ms and polls
GET /api/runs/{run}/checkpoints until each is VERIFIED.

    bench/checkpoint/sidecar_rss.py [--dir /tmp] [--idle 15] [--json out.json]

--set formats registers run.sh's SET=formats files instead (the same state dict as torch.save, a DCP
directory and safetensors; generate them with SET=formats KEEP=1 run.sh 1), and --forensics then asks
for the DJL forensics (InspectCheckpoint) of the torch.save checkpoint: first one tensor (the call that
loads libtorch), then every tensor, with the time and the RSS of each.
"""
import argparse
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "grpc"))
import common  # noqa: E402
import grpc  # noqa: E402
from common import pb  # noqa: E402


def status_kib(pid, *keys):
    """Fields of /proc/PID/status in KiB: VmRSS, and its parts RssAnon (heap, stacks, libraries'
    data) and RssFile (mapped files, which while a checkpoint window is scanned in place includes it)."""
    got = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k = line.split(":")[0]
            if k in keys:
                got[k] = int(line.split()[1])
    return got


def maps_djl(pid):
    with open(f"/proc/{pid}/maps") as f:
        m = f.read()
    return any(k in m for k in ("libdjl", "libtorch"))


class PeakRss(dict):
    """The peak VmRSS/RssAnon/RssFile (KiB) of a process, sampled every 50 ms on a thread until stop()."""

    def __init__(self, pid):
        super().__init__(VmRSS=0, RssAnon=0, RssFile=0)
        self._pid, self._done = pid, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._done.is_set():
            for k, v in status_kib(self._pid, *self).items():
                self[k] = max(self[k], v)
            time.sleep(0.05)

    def stop(self):
        self._done.set()
        self._thread.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--idle", type=float, default=15.0)
    ap.add_argument("--json")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between REST progress polls")
    ap.add_argument("--prop", action="append", default=[], help="extra -Dk=v for the sidecar")
    ap.add_argument("--set", choices=["safetensors", "formats"], default="safetensors")
    ap.add_argument("--forensics", action="store_true", help="with --set formats: DJL forensics of the .pt")
    a = ap.parse_args()
    if a.set == "formats":
        sd = os.path.join(a.dir, "tg-bench-sd")
        files = [sd + ".pt", sd + ".dcp", sd + ".safetensors"]
    else:
        files = [os.path.join(a.dir, n) for n in ("tg-bench-f32.safetensors", "tg-bench-bf16.safetensors")]
    for f in files:
        if not os.path.exists(f):
            sys.exit(f"{f} missing: run bench/checkpoint/run.sh first (it generates the files)")
    jvm = ["--add-modules", "jdk.incubator.vector"] + os.environ.get("TG_JVM_ARGS", "").split()
    sc = common.Sidecar(jvm_args=jvm,
                        extra_props={"trainguard.checkpoint.roots": a.dir,
                                     **dict(p.split("=", 1) for p in a.prop)}).start()
    out = {"machine": common.machine(), "ready_ms": sc.ready_ms, "verifications": []}
    try:
        time.sleep(a.idle)
        out["rss_idle_mib"] = sc.rss_kib() / 1024
        out["rss_idle_anon_file_mib"] = [v / 1024 for v in status_kib(sc.proc.pid, "RssAnon", "RssFile").values()]
        out["djl_loaded_idle"] = maps_djl(sc.proc.pid)
        ch = grpc.insecure_channel(sc.tcp)
        unary = lambda name, req_t, resp_t: ch.unary_unary(  # noqa: E731
            common.SERVICE + name, request_serializer=req_t.SerializeToString, response_deserializer=resp_t.FromString)
        unary("OpenRun", pb.OpenRunRequest, pb.OpenRunResponse)(common.open_request("rss"), timeout=30)
        register = unary("RegisterCheckpoint", pb.RegisterCheckpointRequest, pb.RegisterCheckpointResponse)
        step = 0
        pt_checkpoint = None
        for f in files + files:
            step += 100
            peak = PeakRss(sc.proc.pid)
            t0 = time.monotonic()
            fmt = pb.CHECKPOINT_FORMAT_SAFETENSORS if f.endswith(".safetensors") else pb.CHECKPOINT_FORMAT_TORCH_PICKLE
            resp = register(pb.RegisterCheckpointRequest(
                run_id="rss", step=step, format=fmt, files=[pb.CheckpointFile(path=f)]), timeout=30)
            cid = resp.checkpoint.checkpoint_id
            progress = []
            while True:
                views = [c for c in sc.rest("/api/runs/rss/checkpoints") if c["id"] == cid]
                v = views[0]
                if v["state"] not in ("REGISTERED", "VERIFYING"):
                    break
                progress.append((round(time.monotonic() - t0, 2), round(v["verifyPercent"], 1),
                                 round(v["verifyBytesPerSecond"] / 1e9, 2)))
                time.sleep(a.poll)
            wall = time.monotonic() - t0
            peak.stop()
            size = (sum(os.path.getsize(os.path.join(f, n)) for n in os.listdir(f)) if os.path.isdir(f)
                    else os.path.getsize(f))
            rec = {"file": os.path.basename(f), "bytes": size, "state": v["state"], "reason": v["stateReason"],
                   "register_to_verified_s": round(wall, 3), "gbps_register_to_verified": round(size / wall / 1e9, 2),
                   "gbps_reported": round(v["verifyBytesPerSecond"] / 1e9, 2), "rss_peak_mib": round(peak["VmRSS"] / 1024, 1),
                   "rss_anon_peak_mib": round(peak["RssAnon"] / 1024, 1),
                   "rss_file_peak_mib": round(peak["RssFile"] / 1024, 1),
                   "progress_samples(t_s,percent,GB/s)": progress[:: max(1, len(progress) // 6)]}
            out["verifications"].append(rec)
            print(json.dumps(rec), flush=True)
            if f.endswith(".pt"):
                pt_checkpoint = cid
        if a.forensics:
            inspect = unary("InspectCheckpoint", pb.InspectCheckpointRequest, pb.InspectCheckpointResponse)
            out["forensics"] = []
            for names in (["layers.0.weight"], []):
                before = status_kib(sc.proc.pid, "VmRSS", "RssAnon")
                loaded_before = maps_djl(sc.proc.pid)
                peak = PeakRss(sc.proc.pid)
                t0 = time.monotonic()
                r = inspect(pb.InspectCheckpointRequest(run_id="rss", checkpoint_id=pt_checkpoint, tensors=names),
                            timeout=900)
                wall = time.monotonic() - t0
                peak.stop()
                rec = {"tensors": len(r.tensors), "bytes": r.bytes_inspected, "wall_s": round(wall, 3),
                       "server_ms": r.elapsed_ms, "gb_per_s": round(r.bytes_inspected / wall / 1e9, 3),
                       "s_per_gb": round(wall / (r.bytes_inspected / 1e9), 3),
                       "djl_loaded_before": loaded_before, "djl_loaded_after": maps_djl(sc.proc.pid),
                       "rss_before_mib": round(before["VmRSS"] / 1024, 1),
                       "rss_anon_before_mib": round(before["RssAnon"] / 1024, 1),
                       "rss_peak_mib": round(peak["VmRSS"] / 1024, 1), "rss_anon_peak_mib": round(peak["RssAnon"] / 1024, 1),
                       "rss_after_mib": round(sc.rss_kib() / 1024, 1)}
                out["forensics"].append(rec)
                print(json.dumps(rec), flush=True)
        out["rss_after_mib"] = sc.rss_kib() / 1024
        out["djl_loaded_after"] = maps_djl(sc.proc.pid)
    finally:
        sc.stop(keep=bool(os.environ.get("TG_KEEP")))
        if os.environ.get("TG_KEEP"):
            print("sidecar dir:", sc.tmp)
    print(json.dumps({k: v for k, v in out.items() if k != "verifications"}, indent=1))
    common.save_results(out, a.json)


if __name__ == "__main__":
    main()
