#!/usr/bin/env python3
"""Per-call latency of the sidecar's gRPC step path against a bare grpc.health.v1 Check.

Variants, interleaved round by round (order rotated every round) on one sidecar, over TCP and the
Unix socket alike:
  check      grpc.health.v1.Health/Check, unary      (baseline: a bare round trip through Quarkus)
  report     TrainGuardService/ReportStep, unary     (loss, grad norm, lr, 2 group norms, 14 module stats)
  stream     TrainGuardService/StreamSteps lock-step (send one report, wait for its verdict)
  heartbeat  TrainGuardService/Heartbeat, unary      (diagnostic: engine call without the decision/journal)

Each variant/transport has its own run (world_size 1), so steps stay in order per run. After the last
round: GET /api/runs/<id> stepsReported and COUNT(*) in the journal's steps table must equal the
reports sent (warm-up included).

Usage: python3 latency.py [--rounds 5] [--calls 2000] [--warmup 2000] [--json out.json]
"""
import argparse
import queue
import statistics
import sys
import time

import grpc

import common
from common import pb

p = argparse.ArgumentParser()
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--calls", type=int, default=2000)
p.add_argument("--warmup", type=int, default=2000)
p.add_argument("--variants", default="check,report,stream,heartbeat")
p.add_argument("--transports", default="tcp,unix")
p.add_argument("--json")
p.add_argument("--jvm-arg", action="append", default=[])
args = p.parse_args()
VARIANTS = args.variants.split(",")
TRANSPORTS = args.transports.split(",")


class LockStep:
    """One StreamSteps stream used lock-step: put one report, block on its verdict."""

    def __init__(self, call):
        self.q = queue.SimpleQueue()
        self.responses = call(iter(self.q.get, None))

    def __call__(self, report):
        self.q.put(pb.StreamStepsRequest(report=report))
        return next(self.responses)

    def close(self):
        self.q.put(None)
        for _ in self.responses:
            pass


class Target:
    def __init__(self, name, address):
        self.name = name
        self.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(self.channel).result(timeout=10)
        self.s = common.stubs(self.channel)
        self.runs = {v: f"lat-{v}-{name}" for v in ("report", "stream", "heartbeat")}
        for v, run in self.runs.items():
            self.s["OpenRun"](common.open_request(run), timeout=10)
        self.steps = {v: 0 for v in self.runs}
        self.stream = LockStep(self.s["StreamSteps"])

    def batch(self, variant, n):
        """Pre-built requests for n calls (message building is kept out of the timed section)."""
        if variant == "check":
            return [b""] * n
        run = self.runs[variant]
        start = self.steps[variant]
        self.steps[variant] += n
        if variant == "heartbeat":
            return [pb.HeartbeatRequest(run_id=run, rank=0, step=s, phase=pb.PHASE_STEP) for s in range(start, start + n)]
        if variant == "report":
            return [pb.ReportStepRequest(report=common.step_report(run, 0, s)) for s in range(start, start + n)]
        return [common.step_report(run, 0, s) for s in range(start, start + n)]

    def run(self, variant, n):
        reqs = self.batch(variant, n)
        out = []
        clock = time.perf_counter_ns
        if variant == "check":
            f = self.s["Check"]
            for r in reqs:
                t = clock()
                resp = f(r, timeout=5)
                out.append(clock() - t)
                assert common.health_serving(resp), resp
        elif variant == "report":
            f = self.s["ReportStep"]
            for r in reqs:
                t = clock()
                resp = f(r, timeout=5)
                out.append(clock() - t)
                assert resp.verdict.step == r.report.step
        elif variant == "stream":
            f = self.stream
            for r in reqs:
                t = clock()
                resp = f(r)
                out.append(clock() - t)
                assert resp.verdict.step == r.step and not resp.error, resp
        elif variant == "heartbeat":
            f = self.s["Heartbeat"]
            for r in reqs:
                t = clock()
                f(r, timeout=5)
                out.append(clock() - t)
        return out


def client_cost(n=5000):
    """Client-side cost of building + serializing one realistic report (µs), for the decomposition."""
    dur = common.duration_pb2.Duration(nanos=250_000_000)
    t = time.perf_counter_ns()
    for s in range(n):
        pb.ReportStepRequest(report=pb.StepReport(
            run_id="x", rank=0, step=s, loss=2.5, grad_norm=0.45, learning_rate=3e-4, loss_scale=1.0,
            group_grad_norms=[0.44, 0.06], module_stats=pb.ModuleStats(finite=[True] * 14, max_abs=[1.5] * 14),
            step_time=dur)).SerializeToString()
    build = (time.perf_counter_ns() - t) / n / 1000
    msg = pb.ReportStepRequest(report=common.step_report("x", 0, 1))
    t = time.perf_counter_ns()
    for _ in range(n):
        msg.SerializeToString()
    ser = (time.perf_counter_ns() - t) / n / 1000
    return {"build_and_serialize_us": round(build, 1), "serialize_only_us": round(ser, 2),
            "request_bytes": len(msg.SerializeToString())}


def main():
    sc = common.Sidecar(jvm_args=args.jvm_arg).start()
    result = {"machine": common.machine(), "sidecar_ready_ms": round(sc.ready_ms), "rounds": args.rounds,
              "calls_per_round": args.calls, "warmup": args.warmup, "client": client_cost()}
    try:
        targets = {"tcp": Target("tcp", sc.tcp), "unix": Target("unix", sc.unix)}
        targets = {k: targets[k] for k in TRANSPORTS}
        # Warm-up: JIT on both sides, every path, every transport.
        for t in targets.values():
            for v in VARIANTS:
                t.run(v, args.warmup)
        samples = {(t, v): [] for t in targets for v in VARIANTS}  # per-round lists (ns)
        for rnd in range(args.rounds):
            order = VARIANTS[rnd % len(VARIANTS):] + VARIANTS[:rnd % len(VARIANTS)]
            for t in (TRANSPORTS if rnd % 2 == 0 else TRANSPORTS[::-1]):
                for v in order:
                    samples[(t, v)].append(sorted(targets[t].run(v, args.calls)))
            print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        for t in targets.values():
            t.stream.close()

        table = {}
        for t in TRANSPORTS:
            base = None
            for v in VARIANTS:
                rounds = samples[(t, v)]
                p50s = [common.pct(r, 50) / 1000 for r in rounds]
                p99s = [common.pct(r, 99) / 1000 for r in rounds]
                row = {"p50_us": round(statistics.median(p50s), 1), "p99_us": round(statistics.median(p99s), 1),
                       "p50_rounds_us": [round(x, 1) for x in p50s], "p99_rounds_us": [round(x, 1) for x in p99s],
                       "mean_us": round(statistics.mean(x for r in rounds for x in r) / 1000, 1)}
                if v == "check":
                    base = row
                table[f"{t}/{v}"] = row
            if base:
                for v in VARIANTS:
                    row = table[f"{t}/{v}"]
                    row["p50_ratio"] = round(row["p50_us"] / base["p50_us"], 2)
                    row["p99_ratio"] = round(row["p99_us"] / base["p99_us"], 2)
                    # Per-round ratios: each round's pair was measured minutes apart at most.
                    row["p50_ratio_rounds"] = [round(a / b, 2) for a, b in zip(row["p50_rounds_us"], base["p50_rounds_us"])]
        result["latency"] = table

        checks = {}
        for t in targets.values():
            for v in ("report", "stream"):
                if v not in VARIANTS:
                    continue
                run = t.runs[v]
                view = sc.rest(f"/api/runs/{run}")
                sent = t.steps[v]
                checks[run] = {"sent": sent, "stepsReported": view["run"]["stepsReported"],
                               "journaled": sc.journaled_steps(run), "actions": sc.journaled_actions(run),
                               "state": view["run"]["state"]}
                checks[run]["ok"] = checks[run]["stepsReported"] == sent == checks[run]["journaled"]
        result["journal_check"] = checks
        result["sidecar_rss_kib_after"] = sc.rss_kib()
    finally:
        sc.stop()

    print(f"{'transport/variant':<18} {'p50 µs':>8} {'p99 µs':>8} {'p50 x':>6} {'p99 x':>6}  p50 per round")
    for k, r in result["latency"].items():
        print(f"{k:<18} {r['p50_us']:>8} {r['p99_us']:>8} {r.get('p50_ratio', ''):>6} {r.get('p99_ratio', ''):>6}  {r['p50_rounds_us']}")
    for run, c in result["journal_check"].items():
        print(f"journal {run}: sent={c['sent']} stepsReported={c['stepsReported']} journaled={c['journaled']} "
              f"actions={c['actions']} state={c['state']} {'OK' if c['ok'] else 'MISMATCH'}")
    print("client:", result["client"])
    common.save_results(result, args.json)
    print("loadavg:", result["machine"]["loadavg"], "->", result["machine"]["loadavg_end"])
    return 0 if all(c["ok"] for c in result["journal_check"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
