#!/usr/bin/env python3
"""Is lock-step StreamSteps slower than unary ReportStep because of grpcio's sync stream API?

Same variants as latency.py (check / report / stream lock-step), but with grpc.aio on one event loop,
where a stream write/read does not hop to a request-consumer thread. TCP, interleaved rounds.
Usage: python3 diag_aio.py [--rounds 5] [--calls 1500] [--json out.json]
"""
import argparse
import asyncio
import statistics
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
VARIANTS = ["check", "report", "stream"]


async def main():
    sc = common.Sidecar().start()
    res = {"machine": common.machine()}
    try:
        ch = grpc.aio.insecure_channel(sc.tcp)
        await ch.channel_ready()
        s = common.stubs(ch)
        runs = {"report": "aio-report", "stream": "aio-stream"}
        for r in runs.values():
            await s["OpenRun"](common.open_request(r), timeout=10)
        steps = {"report": 0, "stream": 0}
        stream = s["StreamSteps"]()

        async def go(v, n):
            clock = time.perf_counter_ns
            out = []
            if v == "check":
                for _ in range(n):
                    t = clock()
                    await s["Check"](b"", timeout=5)
                    out.append(clock() - t)
            else:
                st = steps[v]
                steps[v] += n
                reps = [common.step_report(runs[v], 0, x) for x in range(st, st + n)]
                if v == "report":
                    for r in reps:
                        req = pb.ReportStepRequest(report=r)
                        t = clock()
                        await s["ReportStep"](req, timeout=5)
                        out.append(clock() - t)
                else:
                    for r in reps:
                        req = pb.StreamStepsRequest(report=r)
                        t = clock()
                        await stream.write(req)
                        resp = await stream.read()
                        out.append(clock() - t)
                        assert resp.verdict.step == r.step
            out.sort()
            return out

        for v in VARIANTS:
            await go(v, a.warmup)
        samples = {v: [] for v in VARIANTS}
        for rnd in range(a.rounds):
            for v in VARIANTS[rnd % 3:] + VARIANTS[:rnd % 3]:
                samples[v].append(await go(v, a.calls))
        await stream.done_writing()
        base = statistics.median(common.pct(r, 50) for r in samples["check"]) / 1000
        res["aio"] = {}
        for v in VARIANTS:
            p50 = statistics.median(common.pct(r, 50) for r in samples[v]) / 1000
            p99 = statistics.median(common.pct(r, 99) for r in samples[v]) / 1000
            res["aio"][v] = {"p50_us": round(p50, 1), "p99_us": round(p99, 1), "p50_ratio": round(p50 / base, 2)}
            print(f"aio tcp/{v:<7} p50 {p50:8.1f} µs  p99 {p99:8.1f} µs  p50 x {p50 / base:.2f}")
        for v, r in runs.items():
            view = sc.rest(f"/api/runs/{r}")
            print(f"journal {r}: sent={steps[v]} stepsReported={view['run']['stepsReported']} journaled={sc.journaled_steps(r)}")
        await ch.close()
    finally:
        sc.stop()
    common.save_results(res, a.json)


asyncio.run(main())
