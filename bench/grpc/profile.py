#!/usr/bin/env python3
"""JFR CPU profile of the sidecar on the step path (async-profiler is not available here).

Starts a sidecar with -XX:StartFlightRecording (settings=profile, 10 ms Java samples), drives it with
one Debian-python client doing lock-step ReportStep for --seconds, stops it (dump on exit), then
aggregates jdk.ExecutionSample events: samples per thread, top self frames, and inclusive counts
for the frames that matter (engine, proto mapping, journal, gRPC/Netty/Vert.x).

Usage: python3 profile.py [--seconds 20] [--mode unary|stream|load] [--json out.json]
"""
import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time

import grpc

import common
from common import pb

MARKERS = {
    "TrainGuardGrpcService (service method, total)": "io.trainguard.api.grpc.TrainGuardGrpcService",
    "GuardedRuns.reportAsync (engine, total)": "io.trainguard.guard.GuardedRuns.reportAsync\n",
    "RunDecider.decide": "io.trainguard.guard.run.RunDecider.decide",
    "RunDecider.snapshot": "io.trainguard.guard.run.RunDecider.snapshot",
    "ProtoMapper (proto<->engine)": "io.trainguard.api.grpc.ProtoMapper.",
    "GuardEvents / metrics": "io.trainguard.metrics.",
    "SqliteJournal.commit": "io.trainguard.store.SqliteJournal.commit",
    "SqliteJournal.write (enqueue, on the caller)": "io.trainguard.store.SqliteJournal.write\n",
    "SqliteJournal.writeLoop (writer thread, total)": "io.trainguard.store.SqliteJournal.writeLoop",
    "Jackson (snapshot JSON)": "com.fasterxml.jackson.",
    "sqlite JDBC": "org.sqlite.",
    "protobuf parse/serialize": "com.google.protobuf.",
    "grpc-java": "io.grpc.",
    "Vert.x": "io.vertx.",
    "Netty": "io.netty.",
}


def aggregate(jfr_file, depth=64):
    txt = subprocess.run(["jfr", "print", "--events", "jdk.ExecutionSample", "--stack-depth", str(depth), jfr_file],
                         capture_output=True, text=True, check=True).stdout
    threads = collections.Counter()
    self_frames = collections.Counter()
    inclusive = collections.Counter()
    total = 0
    for ev in txt.split("jdk.ExecutionSample")[1:]:
        m = re.search(r'sampledThread = "([^"]*)"', ev)
        thread = re.sub(r"-\d+$", "-N", m.group(1)) if m else "?"
        if thread == "main":  # Quarkus boot, before the load
            continue
        frames = re.findall(r"^\s+([\w$.<>]+)\(", ev.split("stackTrace = [", 1)[-1], re.M)
        if not frames:
            continue
        total += 1
        threads[thread] += 1
        self_frames[frames[0]] += 1
        stack = "\n".join(frames) + "\n"
        for name, pat in MARKERS.items():
            if pat in stack:
                inclusive[name] += 1
    pct = lambda c: round(100.0 * c / max(1, total), 1)  # noqa: E731
    return {"samples": total,
            "threads_pct": {k: pct(v) for k, v in threads.most_common(12)},
            "inclusive_pct": {k: pct(inclusive[k]) for k in MARKERS},
            "top_self_pct": {k: pct(v) for k, v in self_frames.most_common(25)}}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--mode", default="unary", choices=["unary", "stream", "load"])
    p.add_argument("--json")
    a = p.parse_args()
    tmp_jfr = f"/tmp/tg-profile-{os.getpid()}.jfr"
    sc = common.Sidecar(jvm_args=[f"-XX:StartFlightRecording=settings=profile,filename={tmp_jfr},dumponexit=true"]).start()
    sent = 0
    try:
        ch = grpc.insecure_channel(sc.tcp)
        s = common.stubs(ch)
        run = "profile-run"
        if a.mode == "load":
            import throughput
            r = throughput.run_load(sc, 64, 4, "max", a.seconds, warmup=2, client="java")
            sent = r["sent_total"]
        else:
            s["OpenRun"](common.open_request(run), timeout=10)
            end = time.time() + a.seconds
            if a.mode == "unary":
                while time.time() < end:
                    reqs = [pb.ReportStepRequest(report=common.step_report(run, 0, st)) for st in range(sent, sent + 500)]
                    for rq in reqs:
                        s["ReportStep"](rq, timeout=5)
                    sent += 500
            else:
                import queue
                q = queue.SimpleQueue()
                it = s["StreamSteps"](iter(q.get, None))
                while time.time() < end:
                    reqs = [pb.StreamStepsRequest(report=common.step_report(run, 0, st)) for st in range(sent, sent + 500)]
                    for rq in reqs:
                        q.put(rq)
                        next(it)
                    sent += 500
                q.put(None)
        ch.close()
    finally:
        sc.stop()
    res = {"mode": a.mode, "seconds": a.seconds, "reports": sent, **aggregate(tmp_jfr)}
    os.remove(tmp_jfr)
    print(json.dumps(res, indent=1))
    common.save_results(res, a.json)


if __name__ == "__main__":
    sys.exit(main())
