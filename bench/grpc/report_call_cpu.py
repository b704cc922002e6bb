#!/usr/bin/env python3
"""What one step report costs the Python client's calling thread: a unary ReportStep made in this
process, the same call made by the report process (``child``: trainguard/report_process.py, what the
client does on the CUDA device gate since issue 21's eighth pass), and one long-lived StreamSteps
stream in lock-step (one report out, its verdict back), on the client's Transport channel. Per report: the calling thread's CPU (``thread_time``, nearly all of it
holding the GIL), the whole client process's CPU (grpcio's own threads too) and the wall time of the
round trip; for ``child`` also the child's own CPU. The issue 21 seventh pass's reason to try the
stream, the eighth pass's for the child (docs/benchmarks.md).

Usage: python3 report_call_cpu.py --target unix:///tmp/tg.sock [--reports 1000] [--repeats 3] [--out r.json]
"""
import argparse
import json
import os
import queue
import time

from common import machine, open_request, proc_cpu_s, save_results, stubs  # puts clients/python on sys.path
from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb  # noqa: E402
from trainguard.report_process import ReportProcess  # noqa: E402
from trainguard.transport import Transport  # noqa: E402


def measure(send, n, first, child=None):
    """(calling thread µs, process µs, wall µs, the report process's µs or None) per report over ``n``
    reports from step ``first``."""
    c0, p0, w0, k0 = time.thread_time(), time.process_time(), time.perf_counter(), cpu_of(child)
    for step in range(first, first + n):
        send(step)
    return [round((time.thread_time() - c0) / n * 1e6, 1), round((time.process_time() - p0) / n * 1e6, 1),
            round((time.perf_counter() - w0) / n * 1e6, 1),
            None if child is None else round((cpu_of(child) - k0) / n * 1e6, 1)]


def cpu_of(pid):
    """Seconds of CPU process ``pid`` has used, 0 for None."""
    return 0.0 if pid is None else proc_cpu_s(pid)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--reports", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    t = Transport(a.target, deadline=5.0)
    run = f"report-call-cpu-{os.getpid()}"
    t.call("OpenRun", open_request(run))

    def report(step):  # the smallest report (not common.step_report): the call's own cost, as measured before
        return pb.StepReport(run_id=run, rank=0, step=step, loss=2.0 - step * 1e-6, grad_norm=1.0)

    def unary(step):
        t.call("ReportStep", pb.ReportStepRequest(report=report(step)))

    requests = queue.SimpleQueue()
    answers = stubs(t.channel)["StreamSteps"](iter(requests.get, None))

    child = ReportProcess(t.target, t.token)
    if not child.start():
        raise SystemExit("the report process could not start (see the warning above)")

    def via_child(step):
        pb.ReportStepResponse.FromString(child.call(pb.ReportStepRequest(report=report(step)).SerializeToString(), 5.0))

    def stream(step):
        requests.put(pb.StreamStepsRequest(report=report(step)))
        answer = next(answers)
        if answer.error:
            raise SystemExit(f"step {step} refused: {answer.error}")

    kinds = (("unary", unary, None), ("child", via_child, child.pid), ("stream", stream, None))
    step, rows = 0, {kind: [] for kind, _, _ in kinds}
    for kind, send, pid in kinds:  # warm-up
        measure(send, 100, step, pid)
        step += 100
    for _ in range(a.repeats):  # interleaved
        for kind, send, pid in kinds:
            rows[kind].append(measure(send, a.reports, step, pid))
            step += a.reports
    requests.put(None)
    child.close()
    res = {"machine": machine(), "reports": a.reports,
           "columns": ["calling thread CPU us", "process CPU us", "wall us", "report process CPU us"], "per_report": rows}
    save_results(res, a.out)
    print(json.dumps(res, indent=1))
    t.close()


if __name__ == "__main__":
    main()
