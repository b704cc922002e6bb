#!/usr/bin/env python3
"""Sidecar footprint: JVM start to ready (median of N starts), RSS idle, RSS under streaming load.

Start time is measured from Popen (JVM launch) to the first 200 of GET /q/health/ready, each start on
a fresh journal. RSS is VmRSS of the java process from /proc/<pid>/status: idle = IDLE_S seconds
after ready with no client; load = median/max sampled every 0.5 s during a 64-rank StreamSteps run
(bench/grpc/throughput.py, closed loop). DJL is loaded lazily by the checkpoint verifier and no
checkpoint is registered here (RegisterCheckpoint is UNIMPLEMENTED in this build), so neither
number includes DJL or a native engine; loaded classes/libs are listed to show it.

Usage: python3 footprint.py [--starts 5] [--idle 10] [--load-seconds 10] [--json out.json]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "grpc"))
import common  # noqa: E402
import throughput  # noqa: E402


def djl_loaded(pid):
    """Whether any DJL jar/native library is mapped into the process, and the JVM's loaded-class count."""
    maps = open(f"/proc/{pid}/maps").read()
    djl_native = any(k in maps for k in ("libdjl", "libtorch", "libonnxruntime", "pytorch"))
    classes = None
    try:
        out = subprocess.run(["jcmd", str(pid), "VM.classloader_stats"], capture_output=True, text=True, timeout=20).stdout
        hist = subprocess.run(["jcmd", str(pid), "GC.class_histogram"], capture_output=True, text=True, timeout=20).stdout
        djl_classes = sum(1 for line in hist.splitlines() if "ai.djl" in line)
        classes = {"djl_classes_in_histogram": djl_classes}
        total = [line for line in out.splitlines() if line.startswith("Total")]
        if total:
            classes["classloader_total"] = total[0].strip()
    except Exception as e:  # jcmd missing or attach refused: report what we have
        classes = {"error": str(e)}
    return {"djl_native_mapped": djl_native, **(classes or {})}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--starts", type=int, default=5)
    p.add_argument("--idle", type=float, default=10)
    p.add_argument("--load-seconds", type=float, default=10)
    p.add_argument("--load-ranks", type=int, default=64)
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--json")
    a = p.parse_args()
    res = {"machine": common.machine(), "starts_ms": []}
    for i in range(a.starts):
        sc = common.Sidecar().start()
        res["starts_ms"].append(round(sc.ready_ms))
        if i < a.starts - 1:
            sc.stop()
    # The last one stays: idle RSS, then load.
    try:
        time.sleep(a.idle)
        res["rss_idle_kib"] = sc.rss_kib()
        res["idle_djl"] = djl_loaded(sc.proc.pid)
        load = throughput.run_load(sc, a.load_ranks, a.procs, "max", a.load_seconds, window=4, warmup=2)
        res["load"] = {k: load[k] for k in ("world_size", "reports_per_s", "rss_load_kib_median", "rss_load_kib_max",
                                            "journal_ok", "sidecar_cpu_cores")}
        res["rss_after_load_kib"] = sc.rss_kib()
        res["after_load_djl"] = djl_loaded(sc.proc.pid)
    finally:
        sc.stop()
    res["start_ms_median"] = statistics.median(res["starts_ms"])
    print(f"start to ready: median {res['start_ms_median']} ms of {res['starts_ms']}")
    print(f"RSS idle ({a.idle:.0f} s after ready): {res['rss_idle_kib'] / 1024:.0f} MiB; DJL: {res['idle_djl']}")
    print(f"RSS under load ({res['load']['world_size']} ranks, {res['load']['reports_per_s']}/s): median "
          f"{res['load']['rss_load_kib_median'] / 1024:.0f} MiB, max {res['load']['rss_load_kib_max'] / 1024:.0f} MiB; "
          f"after: {res['rss_after_load_kib'] / 1024:.0f} MiB; journal ok: {res['load']['journal_ok']}")
    common.save_results(res, a.json)


if __name__ == "__main__":
    main()
