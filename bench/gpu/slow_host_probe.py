"""Why the host's Python is slower after torch.compile (results/2026-11-30-s11-alloc-probe.txt: a
148-int list 4.4 -> 30-60 us). Times small loops that allocate and loops that do not, a StepReport
build, before compiling, after one compiled step, after Inductor's compile workers are shut down and
after gc.freeze(); and takes a CPU census of every process on the machine (not only this one).

Usage: python slow_host_probe.py [--out FILE.json]
"""
import argparse
import gc
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))  # trainguard.report
sys.path.insert(0, HERE)
from gpt_model import GPT, GPT2_SMALL, train_compiled  # noqa: E402


def timed(fn, n=300):
    """Microseconds per call, the median of ``n`` calls (one call per timing)."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    out.sort()
    return round(out[len(out) // 2] * 1e6, 2)


def spin():
    x = 0
    for _ in range(2000):  # small ints are cached: nothing allocated
        x ^= 1
    return x


def floats():
    x = 0.5
    for _ in range(148):  # one fresh float per iteration
        x = x * 1.0000001
    return x


def report_build():
    from trainguard.report import step_report
    return step_report("run", 0, 7, loss=2.5, grad_norm=0.9, group_norms=[0.9], learning_rate=3e-4,
                       step_time=0.02, loss_absent=False, module_names=[f"m{i}" for i in range(14)],
                       module_values=[1.0] * 14).SerializeToString()


def probes(tag):
    row = {"ints": timed(lambda: list(map(id, range(148)))), "spin": timed(spin), "floats": timed(floats),
           "report_build": timed(report_build), "allocated_blocks": sys.getallocatedblocks(),
           "gc_objects": len(gc.get_objects())}
    print(tag, row, flush=True)
    return row


def census(seconds=2.0):
    """The processes that used the most CPU on the machine over ``seconds``: (ticks of 10 ms, pid, name)."""
    def snap():
        out = {}
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            name = stat[stat.find("(") + 1:stat.rfind(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[pid] = (name, int(fields[11]) + int(fields[12]))
        return out
    a = snap()
    time.sleep(seconds)
    b = snap()
    busy = sorted(((b[p][1] - a[p][1], p, b[p][0]) for p in b if p in a), reverse=True)[:6]
    return {"busiest": busy, "children": sum(1 for p in b if _ppid(p) == os.getpid())}


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    result = {"python": sys.version.split()[0], "torch": torch.__version__,
              "tracing": sys.gettrace() is not None, "profiling": sys.getprofile() is not None}
    import tracemalloc
    result["tracemalloc"] = tracemalloc.is_tracing()
    dev = torch.device("cuda", 0)
    model = GPT(**GPT2_SMALL).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    result["before_compile"] = probes("before compile")
    train_compiled(dev, model, opt)
    result["tracemalloc_after"] = tracemalloc.is_tracing()
    result["after_compile"] = probes("after compile")
    result["census_after_compile"] = census()
    print("census", result["census_after_compile"], flush=True)
    result["after_compile_again"] = probes("after compile, 2 s later")
    try:
        from torch._inductor.async_compile import shutdown_compile_workers
        shutdown_compile_workers()
        time.sleep(1.0)
        result["after_workers_shut"] = probes("after compile workers shut")
        result["census_after_workers_shut"] = census()
        print("census", result["census_after_workers_shut"], flush=True)
    except Exception as e:  # an older torch without it
        result["workers_shut_error"] = repr(e)
    gc.collect()
    gc.freeze()
    result["after_gc_freeze"] = probes("after gc.collect + gc.freeze")
    if args.out:
        out = os.path.join(os.environ.get("OUT", "."), args.out)
        with open(out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
