#!/usr/bin/env python3
"""Where does ReportStep's time over a bare health Check go? Cheap, client-side decomposition.

Interleaved rounds (order rotated), one Debian-python client, TCP, against TWO sidecars at once:
  disk  journal on the root filesystem (as in latency.py)
  shm   journal on /dev/shm (tmpfs): no block I/O at all in the WAL commit
Variants on each:
  check       grpc.health.v1 Check (baseline)
  heartbeat   engine call, no decision, no journal write
  report      realistic ReportStep (2 group norms + 14 module stats, 202 B)
  report_min  ReportStep with loss/grad norm/lr only (no module stats, ~40 B)
  getrun      GetRun: waits for an (empty) journal group commit, then reads incidents (SQLite read)
Also: client-side cost to parse one real ReportStepResponse, and its size.

Usage: python3 diag.py [--rounds 5] [--calls 1500] [--json out.json]
"""
import argparse
import statistics
import sys
import time

import grpc

import common
from common import pb

p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--calls", type=int, default=1500)
p.add_argument("--warmup", type=int, default=1500)
p.add_argument("--json")
a = p.parse_args()
VARIANTS = ["check", "heartbeat", "report", "report_min", "getrun"]


class Target:
    def __init__(self, sc, tag):
        self.ch = grpc.insecure_channel(sc.tcp)
        grpc.channel_ready_future(self.ch).result(timeout=10)
        self.s = common.stubs(self.ch)
        self.runs = {v: f"diag-{v}-{tag}" for v in ("heartbeat", "report", "report_min", "getrun")}
        for run in self.runs.values():
            self.s["OpenRun"](common.open_request(run), timeout=10)
        self.steps = {v: 0 for v in self.runs}

    def reqs(self, v, n):
        if v == "check":
            return [b""] * n
        run, st = self.runs[v], self.steps[v]
        self.steps[v] += n
        if v == "heartbeat":
            return [pb.HeartbeatRequest(run_id=run, rank=0, step=s, phase=pb.PHASE_STEP) for s in range(st, st + n)]
        if v == "getrun":
            return [pb.GetRunRequest(run_id=run, incident_limit=1)] * n
        if v == "report":
            return [pb.ReportStepRequest(report=common.step_report(run, 0, s)) for s in range(st, st + n)]
        out = []
        for s in range(st, st + n):
            loss, gn, lr = common.step_values(s)
            out.append(pb.ReportStepRequest(report=pb.StepReport(run_id=run, rank=0, step=s, loss=loss, grad_norm=gn,
                                                                 learning_rate=lr)))
        return out

    def run(self, v, n):
        f = self.s[{"check": "Check", "heartbeat": "Heartbeat", "report": "ReportStep", "report_min": "ReportStep",
                    "getrun": "GetRun"}[v]]
        clock = time.perf_counter_ns
        out = []
        for r in self.reqs(v, n):
            t = clock()
            f(r, timeout=5)
            out.append(clock() - t)
        out.sort()
        return out


def main():
    disk = common.Sidecar().start()
    shm = common.Sidecar(extra_props={"trainguard.journal.path": f"/dev/shm/tg-diag-{int(time.time())}.db"}).start()
    res = {"machine": common.machine()}
    try:
        targets = {"disk": Target(disk, "disk"), "shm": Target(shm, "shm")}
        for t in targets.values():
            for v in VARIANTS:
                t.run(v, a.warmup)
        samples = {(t, v): [] for t in targets for v in VARIANTS}
        for rnd in range(a.rounds):
            order = VARIANTS[rnd % len(VARIANTS):] + VARIANTS[:rnd % len(VARIANTS)]
            for t in (["disk", "shm"] if rnd % 2 == 0 else ["shm", "disk"]):
                for v in order:
                    samples[(t, v)].append(targets[t].run(v, a.calls))
            print(f"round {rnd + 1}/{a.rounds}", file=sys.stderr, flush=True)
        table = {}
        for t in targets:
            base_rounds = samples[(t, "check")]
            for v in VARIANTS:
                rs = samples[(t, v)]
                p50 = [common.pct(r, 50) / 1000 for r in rs]
                p99 = [common.pct(r, 99) / 1000 for r in rs]
                d50 = [common.pct(r, 50) / 1000 - common.pct(b, 50) / 1000 for r, b in zip(rs, base_rounds)]
                table[f"{t}/{v}"] = {"p50_us": round(statistics.median(p50), 1), "p99_us": round(statistics.median(p99), 1),
                                     "p50_minus_check_us": round(statistics.median(d50), 1),
                                     "p50_ratio": round(statistics.median(p50) / statistics.median(
                                         [common.pct(b, 50) / 1000 for b in base_rounds]), 2)}
        res["diag"] = table
        # Client-side parse cost of a real verdict.
        t = targets["disk"]
        st = t.steps["report"]
        raw = t.ch.unary_unary(common.SERVICE + "ReportStep", request_serializer=pb.ReportStepRequest.SerializeToString,
                               response_deserializer=lambda b: b)(
            pb.ReportStepRequest(report=common.step_report(t.runs["report"], 0, st)), timeout=5)
        t.steps["report"] += 1
        n = 20000
        t0 = time.perf_counter_ns()
        for _ in range(n):
            pb.ReportStepResponse.FromString(raw)
        res["response"] = {"bytes": len(raw), "parse_us": round((time.perf_counter_ns() - t0) / n / 1000, 2),
                           "request_bytes_report": pb.ReportStepRequest(report=common.step_report("diag-report-disk", 0, 1)).ByteSize(),
                           "verdict": str(pb.ReportStepResponse.FromString(raw)).replace("\n", " ")}
        res["journal_check"] = {}
        for name, sc in (("disk", disk), ("shm", shm)):
            for v in ("report", "report_min"):
                run = targets[name].runs[v]
                view = sc.rest(f"/api/runs/{run}")
                res["journal_check"][run] = {"sent": targets[name].steps[v], "stepsReported": view["run"]["stepsReported"],
                                             "journaled": sc.journaled_steps(run)}
    finally:
        import os
        shm_path = shm.journal
        disk.stop()
        shm.stop()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(shm_path + suffix)
            except OSError:
                pass
    print(f"{'journal/variant':<18} {'p50 µs':>8} {'p99 µs':>8} {'p50 x':>6} {'p50-check µs':>13}")
    for k, r in res["diag"].items():
        print(f"{k:<18} {r['p50_us']:>8} {r['p99_us']:>8} {r['p50_ratio']:>6} {r['p50_minus_check_us']:>13}")
    print("response:", res["response"])
    print("journal:", res["journal_check"])
    common.save_results(res, a.json)


if __name__ == "__main__":
    main()
