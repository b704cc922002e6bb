"""Where the device gate's per-step address upload (GradTable.upload, ``mg_upload``: 340-470 us a
step on the H200 host after torch.compile) goes: after each compiled backward of GPT-2 small, the
pieces of that upload are timed one by one, and the steps on which the gradients, the loss, or
both moved are counted. Steps alternate which piece reads the fresh gradients first, since the
first ``p.grad`` of a gradient autograd made wraps it in a Python object.

Usage: python upload_probe.py [--steps 200] [--out res.json]
"""
import argparse
import array
import ctypes
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "clients", "python"))
from gpt_model import GPT, GPT2_SMALL  # noqa: E402
from trainguard.grad_table import GradTable  # noqa: E402


def full_walk(params, numels):
    """GradTable.upload's checks and addresses, as it does them."""
    ptrs = []
    for p, n in zip(params, numels):
        g = p.grad
        if g is None:
            ptrs.append(0)
        elif type(g) is torch.Tensor and g.is_contiguous() and g.numel() == n:
            ptrs.append(g.data_ptr())
        else:
            return None
    return ptrs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    model = GPT(**GPT2_SMALL).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    fwd = torch.compile(model)
    x = torch.randint(0, GPT2_SMALL["vocab"], (a.batch, GPT2_SMALL["seq"] + 1), device=dev)
    table = GradTable(opt, dev)
    params, numels = table.params, [p.numel() for p in table.params]
    idx = list(range(len(params)))
    times = {k: [] for k in ("first_walk", "first_listcomp", "walk_again", "listcomp_again", "data_ptrs",
                             "ptrs_equal", "pinned_tensor_and_copy", "upload_checked", "optimizer_step",
                             "optimizer_step_after_walk", "optimizer_step_after_listcomp_only",
                             "kept_pinned_and_copy", "pageable_tensor_and_copy", "stage_fresh", "stage_kept")}
    kept_host = torch.empty(len(params) + 16, dtype=torch.int64, pin_memory=True)
    kept_event = torch.cuda.Event()
    stats = torch.zeros(30, device=dev)
    stage_host = torch.empty(30, pin_memory=True)
    stage_event = torch.cuda.Event(blocking=True)
    moved = {"grads": 0, "loss": 0, "steps": 0}
    last_ptrs, last_loss = None, None
    for step in range(a.steps + 5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        warm = step >= 5
        t0 = time.perf_counter()
        if step % 2:
            ptrs = full_walk(params, numels)
            t1 = time.perf_counter()
            grads = [p.grad for p in params]
            t2 = time.perf_counter()
            first, again = ("first_walk", "listcomp_again")
        else:
            grads = [p.grad for p in params]
            t1 = time.perf_counter()
            ptrs = full_walk(params, numels)
            t2 = time.perf_counter()
            first, again = ("first_listcomp", "walk_again")
        t3 = time.perf_counter()
        dp = list(map(torch.Tensor.data_ptr, grads))
        t4 = time.perf_counter()
        same = last_ptrs is not None and torch._C._tensors_data_ptrs_at_indices_equal(grads, last_ptrs, idx)
        t5 = time.perf_counter()
        buf = torch.empty(len(params) + 16, dtype=torch.int64, device=dev)
        t6 = time.perf_counter()
        buf[:len(ptrs) + 1].copy_(torch.tensor(ptrs + [loss.data_ptr()], dtype=torch.int64, pin_memory=True),
                                  non_blocking=True)
        t7 = time.perf_counter()
        table.upload([loss.detach().reshape(1)], checked=True)
        t8 = time.perf_counter()
        vals = ptrs + [loss.data_ptr()]
        n = len(vals)
        ta = time.perf_counter()
        if kept_event.query():
            src = array.array("q", vals)
            ctypes.memmove(kept_host.data_ptr(), src.buffer_info()[0], 8 * n)
            buf[:n].copy_(kept_host[:n], non_blocking=True)
            kept_event.record()
        tb = time.perf_counter()
        buf[:n].copy_(torch.tensor(vals, dtype=torch.int64), non_blocking=True)
        tc = time.perf_counter()
        host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        ev = torch.cuda.Event(blocking=True)
        ev.record()
        td = time.perf_counter()
        stage_host.copy_(stats, non_blocking=True)
        stage_event.record()
        te = time.perf_counter()
        if warm:
            times["kept_pinned_and_copy"].append(tb - ta)
            times["pageable_tensor_and_copy"].append(tc - tb)
            times["stage_fresh"].append(td - tc)
            times["stage_kept"].append(te - td)
        opt.step()
        t9 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        if warm:
            times[first].append(t1 - t0)
            times[again].append(t2 - t1)
            times["data_ptrs"].append(t4 - t3)
            times["ptrs_equal"].append(t5 - t4)
            times["pinned_tensor_and_copy"].append(t7 - t6)
            times["upload_checked"].append(t8 - t7)
            times["optimizer_step"].append(t9 - t8)
            moved["steps"] += 1
            moved["grads"] += int(not same)
            moved["loss"] += int(loss.data_ptr() != last_loss)
        last_ptrs, last_loss = dp, loss.data_ptr()
    # the optimizer step alone, with and without a walk before it that wrapped the gradients
    for step in range(60):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        kind = ("optimizer_step_after_walk", "optimizer_step_after_listcomp_only", "optimizer_step")[step % 3]
        if kind == "optimizer_step_after_walk":
            full_walk(params, numels)
        elif kind == "optimizer_step_after_listcomp_only":
            [p.grad for p in params]
        t = time.perf_counter()
        opt.step()
        times[kind].append(time.perf_counter() - t)
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    out = {"torch": torch.__version__, "params": len(params), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "moved": moved,
           "us_median": {k: round(statistics.median(v) * 1e6, 1) for k, v in times.items() if v},
           "us_p90": {k: round(sorted(v)[int(0.9 * len(v))] * 1e6, 1) for k, v in times.items() if v}}
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
