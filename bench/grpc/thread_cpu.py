#!/usr/bin/env python3
"""Where a call's CPU goes, per sidecar thread: lock-step calls of each variant against one sidecar,
reading /proc/<pid>/task/*/stat (utime+stime, native code included, which JFR does not sample)
before and after each batch. Answers "is the gap on the event loop, the journal writer, the JIT or
the client?" with µs of CPU per call. Ratios here are CPU, not latency: latency is latency.py.

Usage: python3 thread_cpu.py [--calls 20000] [--rounds 3] [--variants check,heartbeat,report]
                             [--transport unix|tcp] [--json out.json]
"""
import argparse
import collections
import os
import sys
import time

import grpc

import common
from common import pb


def thread_ticks(pid):
    """utime+stime clock ticks per thread name (numbered pool threads summed under one name)."""
    out = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = open(f"/proc/{pid}/task/{tid}/comm").read().strip().rstrip("0123456789-#")
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            out[name] += int(fields[11]) + int(fields[12])
        except OSError:
            pass  # a thread that ended between listdir and read
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default="check,heartbeat,report")
    p.add_argument("--transport", default="unix", choices=["unix", "tcp"])
    p.add_argument("--json")
    a = p.parse_args()
    us_per_tick = 1e6 / os.sysconf("SC_CLK_TCK")
    sc = common.Sidecar().start()
    result = {"machine": common.machine(), "calls": a.calls, "transport": a.transport, "rounds": []}
    try:
        ch = grpc.insecure_channel(sc.unix if a.transport == "unix" else sc.tcp)
        s = common.stubs(ch)
        run = "thread-cpu"
        s["OpenRun"](common.open_request(run), timeout=10)
        step = [0]

        def batch(variant, n):
            if variant == "report":
                reqs = [pb.ReportStepRequest(report=common.step_report(run, 0, x)) for x in range(step[0], step[0] + n)]
                step[0] += n
                return s["ReportStep"], reqs
            if variant == "heartbeat":
                return s["Heartbeat"], [pb.HeartbeatRequest(run_id=run, rank=0, step=x, phase=pb.PHASE_STEP) for x in range(n)]
            return s["Check"], [b""] * n

        for v in a.variants.split(","):  # warm-up, not counted
            f, reqs = batch(v, 3000)
            for r in reqs:
                f(r, timeout=5)
        for rnd in range(a.rounds):
            row = {}
            for v in a.variants.split(","):
                f, reqs = batch(v, a.calls)  # built outside the counted window
                before, c0, t0 = thread_ticks(sc.proc.pid), os.times(), time.perf_counter()
                for r in reqs:
                    f(r, timeout=5)
                wall, c1, after = time.perf_counter() - t0, os.times(), thread_ticks(sc.proc.pid)
                threads = {k: round((after[k] - before[k]) * us_per_tick / a.calls, 1) for k in after if after[k] > before[k]}
                row[v] = {"wall_us": round(wall * 1e6 / a.calls, 1),
                          "client_cpu_us": round((c1.user + c1.system - c0.user - c0.system) * 1e6 / a.calls, 1),
                          "sidecar_cpu_us": round(sum(threads.values()), 1), "threads_us": threads}
                print(f"round {rnd + 1} {v:<9} wall {row[v]['wall_us']:>6} µs  client {row[v]['client_cpu_us']:>5}  "
                      f"sidecar {row[v]['sidecar_cpu_us']:>5}  {threads}", flush=True)
            result["rounds"].append(row)
        ch.close()
    finally:
        sc.stop()
    common.save_results(result, a.json)
    print("loadavg:", result["machine"]["loadavg"], "->", result["machine"]["loadavg_end"])


if __name__ == "__main__":
    sys.exit(main())
