"""What the per-block watch hooks cost a forward on the GPU machine (issue 21, HF Trainer with 14
watched blocks): the GPT-2-small bench model at batch 8 under bf16 autocast, forward + backward, with
no hooks, with trainguard's ModuleWatch measuring each call in its hook (``in_hook``: one reduction
launch per module, as before the batched statistics) and as shipped (``batched``: one launch when the
forward returns), and with hooks that only keep the output (the floor of any hook). Per variant: the host time of the forward's launches (no sync) and
the step's wall time (synchronised), medians of --reps steps, variants interleaved.

Usage: python3 bench/gpu/watch_probe.py --reps 40 --out res.json
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
sys.path.insert(0, HERE)
from gpt_model import GPT, GPT2_SMALL  # noqa: E402
from trainguard.stats import ModuleWatch  # noqa: E402
from trainguard.watch_names import auto_watch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    model = GPT(**GPT2_SMALL).cuda()
    names = auto_watch(model)
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, GPT2_SMALL["vocab"], (a.batch, GPT2_SMALL["seq"] + 1), generator=g)
    x, y = r[:, :-1].contiguous().cuda(), r[:, 1:].contiguous().cuda()
    kept = []
    watch = ModuleWatch(model, names)
    watch.remove()
    modules = dict(model.named_modules())
    keep_handles = []

    def set_variant(v):
        watch.remove()
        watch.reset()
        for h in keep_handles:
            h.remove()
        keep_handles.clear()
        if v in ("batched", "in_hook"):
            # in_hook: every call measured in its hook, one reduction launch per module (the code
            # before the batched statistics)
            watch._in_hook = set(range(len(watch.names))) if v == "in_hook" else set()
            watch.attach()
        elif v == "keep":
            keep_handles.extend(modules[n].register_forward_hook(lambda m, i, o: kept.append(o)) for n in names)

    res = {v: {"fwd_host_ms": [], "step_ms": []} for v in ("none", "in_hook", "batched", "keep")}
    for rep in range(a.reps + 5):
        for v in res:
            set_variant(v)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x, y)
            t1 = time.perf_counter()
            loss.backward()
            model.zero_grad(set_to_none=True)
            kept.clear()
            watch.reset()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if rep >= 5:
                res[v]["fwd_host_ms"].append((t1 - t0) * 1e3)
                res[v]["step_ms"].append((t2 - t0) * 1e3)
    out = {v: {k: round(statistics.median(xs), 3) for k, xs in d.items()} for v, d in res.items()}
    out["gpu"] = torch.cuda.get_device_name(0)
    out["torch"] = torch.__version__
    print(json.dumps(out, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"medians": out, "raw": res}, f, indent=1)


if __name__ == "__main__":
    main()
