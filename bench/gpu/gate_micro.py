"""The device gate's measure-and-gate in isolation, on the GPT-2-small gradients: host time per call
(what a launch-bound or host-synced step pays) and GPU time (what every step pays), for the eager
kernels (``StepMeter.on_device`` + ``DeviceGate.install``) and the graph (``gate_graph``), and the
norm kernels alone (``torch._foreach_norm`` vs ``grad_table``). Also the fused AdamW step with and
without the gate's ``found_inf``/``grad_scale`` (torch then runs an extra pass to undo the step count).

    python3 bench/gpu/gate_micro.py [--iters 200] [--out FILE.json]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from gpt_model import GPT  # noqa: E402
from trainguard.gate_graph import GateGraphs  # noqa: E402
from trainguard.grad_table import GradTable  # noqa: E402
from trainguard.measure import DeviceGate, StepMeter  # noqa: E402
from trainguard.stats import ModuleWatch  # noqa: E402
from trainguard.watch_names import auto_watch  # noqa: E402


def timed(fn, iters):
    """(host µs per call median, GPU µs per call): host = wall time of the call alone; GPU = events
    around ``iters`` back-to-back calls after the queue drained."""
    host = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t) * 1e6)
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(iters):
        fn()
    b.record()
    torch.cuda.synchronize()
    return statistics.median(host), a.elapsed_time(b) * 1000 / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--out")
    a = ap.parse_args()
    dev = torch.device("cuda", 0)
    model = GPT(vocab=50257, seq=1024, d=768, layers=12, heads=12).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    watch = ModuleWatch(model, auto_watch(model))
    x = torch.randint(0, 50257, (8, 1025), device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    names, mods = watch.take_list(dev)
    meter, gate = StepMeter(opt, dev, None, None), DeviceGate(opt, dev)
    graphs = GateGraphs(meter, gate, opt, dev)
    meter.take_watch = lambda: (names, mods)  # the same module statistics every call

    def eager():
        stats, total, _, _ = meter.on_device(loss, taken=(names, mods))
        gate.install(stats, total, 1.0)

    graphs.measure_and_install(loss, 1.0)  # eager + capture
    params = [p for p in model.parameters()]
    assert graphs.counters["captures"] == 1, graphs.counters
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "grads": len(list(model.parameters())),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    grads = [p.grad for p in model.parameters()]
    table = GradTable(opt, dev)
    table.upload()
    res["eager_measure_and_gate"] = timed(eager, a.iters)
    res["graph_measure_and_gate"] = timed(lambda: graphs.measure_and_install(loss, 1.0), a.iters)
    res["graph_upload_only"] = timed(lambda: (setattr(graphs._table, "_last", None), graphs._table.upload()), a.iters)
    res["foreach_norm_only"] = timed(lambda: torch._foreach_norm(grads, 2, dtype=torch.float32), a.iters)
    res["table_sums_only"] = timed(table.sums, a.iters)
    res["stage"] = timed(lambda: gate.stage(graphs._graphs[(len(mods), True)].stats), a.iters)
    res["ptr_loop"] = timed(lambda: [p.grad.data_ptr() for p in params], a.iters)
    res["ptr_loop_contiguous"] = timed(lambda: [p.grad.data_ptr() for p in params if p.grad.is_contiguous()], a.iters)
    rows = [p.grad.data_ptr() for p in params]
    res["tensor_pin_memory"] = timed(lambda: torch.tensor(rows, dtype=torch.int64).pin_memory(), a.iters)
    pinned = torch.empty(len(rows), dtype=torch.int64, pin_memory=True)
    res["tensor_into_pinned"] = timed(lambda: pinned.copy_(torch.tensor(rows, dtype=torch.int64)), a.iters)
    cap = graphs._graphs[(len(mods), True)]
    res["replay_only"] = timed(cap.graph.replay, a.iters)
    res["load_inputs"] = timed(lambda: graphs._load(cap, loss, mods, 1.0), a.iters)
    res["empty_pinned"] = timed(lambda: torch.empty(16, pin_memory=True), a.iters)
    res["event_record"] = timed(lambda: torch.cuda.Event().record(), a.iters)
    # in a training loop: fresh gradients every step (zero_grad(set_to_none=True)), a host sync after backward
    steps = []
    pieces = {"take_watch": 0.0, "grads": 0.0, "upload": 0.0, "load": 0.0, "replay": 0.0, "gpu_after": 0.0}
    for i in range(30):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        bool(torch.isnan(loss))
        if i % 2 == 0:
            t = time.perf_counter()
            graphs.measure_and_install(loss, 1.0)
            steps.append((time.perf_counter() - t) * 1e6)
            continue
        t = time.perf_counter(); nm = graphs.meter.take_watch(); pieces["take_watch"] += time.perf_counter() - t
        t = time.perf_counter(); _ = [p.grad for p in params]; pieces["grads"] += time.perf_counter() - t
        t = time.perf_counter(); graphs._table.upload(); pieces["upload"] += time.perf_counter() - t
        t = time.perf_counter(); graphs._load(cap, loss, nm[1], 1.0); pieces["load"] += time.perf_counter() - t
        t = time.perf_counter(); cap.graph.replay(); pieces["replay"] += time.perf_counter() - t
        t = time.perf_counter(); torch.cuda.synchronize(); pieces["gpu_after"] += time.perf_counter() - t
    res["in_loop_measure_and_gate_us"] = [statistics.median(steps), max(steps)]
    res["in_loop_pieces_us"] = {k: v / 15 * 1e6 for k, v in pieces.items()}
    print("in loop:", res["in_loop_measure_and_gate_us"], res["in_loop_pieces_us"])
    gate.uninstall()
    res["adamw_step_ungated"] = timed(opt.step, 50)
    gate.point(1.0)
    res["adamw_step_gated"] = timed(opt.step, 50)
    gate.uninstall()
    for k, v in res.items():
        if isinstance(v, tuple):
            print(f"{k:26s} host {v[0]:8.1f} us   GPU {v[1]:8.1f} us")
    print("graph counters", graphs.counters)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
