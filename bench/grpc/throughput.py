#!/usr/bin/env python3
"""Sustained report rate of one sidecar with N data-parallel ranks streaming (StreamSteps).

One run, world_size=N; rank i has its own StreamSteps stream. The ranks are spread over P client
processes (grpc.aio, one event loop each) so the Python GIL is not the limit. Every rank sends the
same grad norm for the same step (all-reduced gradients), so the cross-rank check stays quiet.

Two modes per N, each on a fresh run of the same sidecar:
  max   closed loop, W reports in flight per stream (pipelined, like an async client):
        the saturation rate. Latency here is queueing by construction (Little: in-flight / rate).
  rate  open loop at a fixed total rate R (default 5000/s), reports sent on schedule without
        waiting for verdicts; latency is measured from the *scheduled* send time (no coordinated
        omission). This is the "can it sustain 5,000 reports/s with p99 < 5 ms" measurement.

Client and sidecar share the machine's cores: the client processes' CPU is reported next to the
sidecar's. After each run: stepsReported (REST) and COUNT(*) of journaled steps must both equal
the reports sent.

Usage: python3 throughput.py [--ranks 8,64] [--procs 4] [--seconds 15] [--window 4] [--rate 5000]
"""
import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------------- worker side

async def worker_main(a):
    import grpc
    import common
    from common import pb

    ranks = [int(r) for r in a.worker_ranks.split(",")]
    channel = grpc.aio.insecure_channel(a.target)
    await channel.channel_ready()
    s = common.stubs(channel)
    for r in ranks:
        await s["OpenRun"](common.open_request(a.run, r, a.world), timeout=30)
    ident = lambda b: b  # noqa: E731
    stream_call = channel.stream_stream(common.SERVICE + "StreamSteps", request_serializer=ident,
                                        response_deserializer=pb.StreamStepsResponse.FromString)

    # Serialized requests are built before the clock starts: the client's message building (~50 µs
    # a report in CPython) would otherwise eat the cores the sidecar is measured on.
    per_rank = int(a.prebuild_rate / a.world * (a.warmup + a.seconds + 1)) + 16
    prebuilt = {r: [pb.StreamStepsRequest(report=common.step_report(a.run, r, st)).SerializeToString()
                    for st in range(per_rank)] for r in ranks}
    sys.stderr.write("")
    print("ready", flush=True)
    a.start_at = float(sys.stdin.readline())

    streams = []
    for r in ranks:
        call = stream_call()
        streams.append({"rank": r, "call": call, "sent": collections.deque(), "next_step": 0,
                        "nsent": 0, "nrecv": 0, "errors": 0, "inflight": asyncio.Semaphore(a.window)})
    lat_ms = []
    measured = [0]
    completed = [0]
    t_measure = a.start_at + a.warmup
    t_end = t_measure + a.seconds

    def build(st):
        step = st["next_step"]
        st["next_step"] += 1
        pre = prebuilt[st["rank"]]
        if step < len(pre):
            return pre[step], step
        return pb.StreamStepsRequest(report=common.step_report(a.run, st["rank"], step)).SerializeToString(), step

    async def reader(st):
        call = st["call"]
        while True:
            resp = await call.read()
            if resp is grpc.aio.EOF:
                return
            now = time.time()
            t_sched, step = st["sent"].popleft()
            if resp.error or resp.verdict.step != step:
                st["errors"] += 1
            st["nrecv"] += 1
            if t_measure <= now < t_end:
                completed[0] += 1
            if t_measure <= t_sched < t_end:
                lat_ms.append((now - t_sched) * 1000.0)
                measured[0] += 1
            if a.mode == "max":
                st["inflight"].release()

    async def closed_sender(st):
        call = st["call"]
        while time.time() < t_end:
            await st["inflight"].acquire()
            req, step = build(st)
            st["sent"].append((time.time(), step))
            await call.write(req)
            st["nsent"] += 1
        await call.done_writing()

    async def open_sender():
        # One schedule per process: send k goes to stream k % n at start_at + k / rate_per_proc.
        n = len(streams)
        rate = a.rate * len(ranks) / a.world
        k = 0
        t0 = a.start_at
        while True:
            due = t0 + k / rate
            if due >= t_end:
                break
            now = time.time()
            if due > now + 0.0005:
                await asyncio.sleep(due - now)
            st = streams[k % n]
            req, step = build(st)
            st["sent"].append((due, step))
            await st["call"].write(req)
            st["nsent"] += 1
            k += 1
        for st in streams:
            await st["call"].done_writing()

    wait = a.start_at - time.time()
    if wait > 0:
        await asyncio.sleep(wait)
    cpu0 = os.times()
    readers = [asyncio.create_task(reader(st)) for st in streams]
    if a.mode == "max":
        await asyncio.gather(*[closed_sender(st) for st in streams])
    else:
        await open_sender()
    await asyncio.gather(*readers)
    cpu1 = os.times()
    await channel.close()
    out = {"ranks": ranks, "sent": sum(st["nsent"] for st in streams), "recv": sum(st["nrecv"] for st in streams),
           "errors": sum(st["errors"] for st in streams), "measured": measured[0], "completed": completed[0],
           "cpu_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 2),
           "lat_ms": lat_ms}
    sys.stdout.write(json.dumps(out))


# ----------------------------------------------------------------------------------- driver side

LOADGEN_DIR = "/tmp/tg-loadgen"


def java_loadgen_cmd():
    """Compiles LoadGen.java once against the sidecar's own jars; returns the java command prefix."""
    import common
    app = os.path.dirname(common.ensure_app())
    cp = f"{app}/lib/main/*:{app}/app/*"
    cls = os.path.join(LOADGEN_DIR, "LoadGen.class")
    src = os.path.join(HERE, "LoadGen.java")
    if not os.path.exists(cls) or os.path.getmtime(cls) < os.path.getmtime(src):
        os.makedirs(LOADGEN_DIR, exist_ok=True)
        subprocess.run(["javac", "-nowarn", "-cp", cp, "-d", LOADGEN_DIR, src], check=True)
    return ["java", "-XX:+UseSerialGC", "-Xmx1g", "-cp", f"{LOADGEN_DIR}:{cp}", "LoadGen"]


def run_load(sc, world, procs, mode, seconds, window=4, rate=5000.0, warmup=3.0, target=None, python=None,
             prebuild_rate=6000.0, client="python"):
    """Runs one load against a started common.Sidecar; returns the result dict (also used by footprint)."""
    import common
    run = f"tp-{mode}-{world}-{int(time.time() * 1000) % 10**8}"
    procs = min(procs, world)
    groups = [list(range(world))[i::procs] for i in range(procs)]
    cmd_base = [python or sys.executable, os.path.join(HERE, "throughput.py"), "--worker", "--target", target or sc.tcp,
                "--run", run, "--world", str(world), "--mode", mode, "--seconds", str(seconds),
                "--warmup", str(warmup), "--window", str(window), "--rate", str(rate),
                "--prebuild-rate", str(rate * 1.05 if mode == "rate" else prebuild_rate)]
    if client == "java":
        procs = 1
        cmd = java_loadgen_cmd() + ["--target", target or sc.tcp, "--run", run, "--world", str(world), "--mode", mode,
                                    "--seconds", str(seconds), "--warmup", str(warmup), "--window", str(window),
                                    "--rate", str(rate)]
        workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.PIPE, cwd=HERE, text=True)]
    else:
        workers = [subprocess.Popen(cmd_base + ["--worker-ranks", ",".join(map(str, g))], stdout=subprocess.PIPE,
                                    stdin=subprocess.PIPE, cwd=HERE, text=True) for g in groups]
    for w in workers:
        line = w.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"worker did not get ready: {line!r}")
    start_at = time.time() + 0.5
    for w in workers:
        w.stdin.write(repr(start_at) + "\n")
        w.stdin.flush()
    # Sample the sidecar's RSS and CPU during the measured window.
    rss = []
    while time.time() < start_at + warmup:
        time.sleep(0.05)
    cpu0, t0 = common.proc_cpu_s(sc.proc.pid), time.time()
    while time.time() < start_at + warmup + seconds:
        rss.append(sc.rss_kib())
        time.sleep(0.5)
    cpu1, t1 = common.proc_cpu_s(sc.proc.pid), time.time()
    outs = []
    for w in workers:
        o, _ = w.communicate(timeout=120)
        if w.returncode != 0:
            raise RuntimeError(f"worker failed rc={w.returncode}")
        outs.append(json.loads(o))
    lat = sorted(x for o in outs for x in o["lat_ms"])
    sent = sum(o["sent"] for o in outs)
    measured = sum(o["measured"] for o in outs)
    completed = sum(o["completed"] for o in outs)
    view = sc.rest(f"/api/runs/{run}")
    journaled = sc.journaled_steps(run)
    res = {
        "run": run, "client": client, "world_size": world, "procs": procs, "mode": mode, "window": window if mode == "max" else None,
        "target_rate": rate if mode == "rate" else None, "seconds": seconds,
        "reports_per_s": round(completed / seconds), "sent_on_schedule_per_s": round(measured / seconds), "sent_total": sent, "errors": sum(o["errors"] for o in outs),
        "p50_ms": round(common.pct(lat, 50), 2), "p99_ms": round(common.pct(lat, 99), 2),
        "p999_ms": round(common.pct(lat, 99.9), 2), "max_ms": round(lat[-1], 2) if lat else None,
        "stepsReported": view["run"]["stepsReported"], "journaled": journaled,
        "actions": sc.journaled_actions(run), "state": view["run"]["state"],
        "sidecar_cpu_cores": round((cpu1 - cpu0) / (t1 - t0), 2),
        "sidecar_cpu_us_per_report": round((cpu1 - cpu0) / max(1, measured) * 1e6, 1),
        "client_cpu_s_total": round(sum(o["cpu_s"] for o in outs), 1),
        "client_cpu_us_per_report": round(sum(o["cpu_s"] for o in outs) / max(1, sent) * 1e6, 1),
        "rss_load_kib_median": int(statistics.median(rss)) if rss else None, "rss_load_kib_max": max(rss) if rss else None,
    }
    res["journal_ok"] = res["stepsReported"] == sent == journaled and res["errors"] == 0
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--worker-ranks")
    p.add_argument("--target")
    p.add_argument("--run")
    p.add_argument("--world", type=int)
    p.add_argument("--start-at", type=float)
    p.add_argument("--ranks", default="8,64")
    p.add_argument("--procs", type=int, default=4)
    p.add_argument("--modes", default="max,rate")
    p.add_argument("--mode", default="max")
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--rate", type=float, default=5000)
    p.add_argument("--rates", default="5000,2000")
    p.add_argument("--prebuild-rate", type=float, default=6000)
    p.add_argument("--transport", default="tcp", choices=["tcp", "unix"])
    p.add_argument("--client", default="python", choices=["python", "java"],
                   help="python: grpc.aio worker processes (the real client); java: LoadGen.java, a cheap client "
                        "that leaves the cores to the sidecar")
    p.add_argument("--json")
    a = p.parse_args()
    if a.worker:
        asyncio.run(worker_main(a))
        return 0

    import common
    sc = common.Sidecar().start()
    results = {"machine": common.machine(), "runs": []}
    ok = True
    try:
        results["rss_idle_kib"] = sc.rss_kib()
        # JIT warm-up of the sidecar: a short closed-loop run that is not reported.
        run_load(sc, 8, a.procs, "max", 5, window=a.window, warmup=1, client=a.client,
                 target=sc.unix if a.transport == "unix" else sc.tcp)
        for world in [int(x) for x in a.ranks.split(",")]:
            loads = [("max", None)] if "max" in a.modes else []
            loads += [("rate", float(x)) for x in a.rates.split(",")] if "rate" in a.modes else []
            for mode, rate in loads:
                r = run_load(sc, world, a.procs, mode, a.seconds, window=a.window, rate=rate or 0.0, warmup=a.warmup,
                             target=sc.unix if a.transport == "unix" else sc.tcp, client=a.client)
                r["transport"] = a.transport
                results["runs"].append(r)
                ok &= r["journal_ok"]
                print(f"{a.client:<6} N={world:>3} {mode:<4} {'' if rate is None else int(rate):>5} {r['reports_per_s']:>6}/s p50={r['p50_ms']}ms p99={r['p99_ms']}ms "
                      f"p99.9={r['p999_ms']}ms sidecar_cpu={r['sidecar_cpu_cores']} cores "
                      f"({r['sidecar_cpu_us_per_report']} µs/report) client={r['client_cpu_us_per_report']} µs/report "
                      f"rss={r['rss_load_kib_median'] // 1024} MiB sent={r['sent_total']} "
                      f"stepsReported={r['stepsReported']} journaled={r['journaled']} errors={r['errors']} "
                      f"actions={r['actions']} {'OK' if r['journal_ok'] else 'MISMATCH'}", flush=True)
        results["rss_after_kib"] = sc.rss_kib()
    finally:
        sc.stop()
    common.save_results(results, a.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
