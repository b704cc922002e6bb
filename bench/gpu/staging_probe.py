"""What the device gate's two small host<->device copies per step cost on the host, before and after
one torch.compile'd training step (the host a compiled loop runs on, alloc_probe.py): the address
table's upload (163 ints, GPT-2 small's 148 gradients plus 15 scalars) from a fresh pinned tensor as
GradTable does it, from a fresh pageable one, from one reused pageable buffer; and the statistics'
staging (DeviceGate.stage: a fresh pinned tensor and a fresh CUDA event per step) against a view of
a preallocated pinned ring and a reused event. Microseconds per call, mean of 400.

Usage: python staging_probe.py [--out FILE.json]
"""
import argparse
import array
import ctypes
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from alloc_probe import timed as mean_us  # noqa: E402
from gpt_model import train_compiled  # noqa: E402


def timed(fn, n=400):
    """alloc_probe's mean microseconds per call, the device drained before and after."""
    torch.cuda.synchronize()
    dt = mean_us(fn, n)
    torch.cuda.synchronize()
    return dt


def probes(dev):
    ptrs = [0x7F0000000000 + 4096 * i for i in range(163)]
    table = torch.zeros(163, dtype=torch.int64, device=dev)
    reused = torch.zeros(163, dtype=torch.int64)
    stats = torch.randn(20, device=dev)
    ring = torch.empty(512, 20, pin_memory=True)
    event = torch.cuda.Event(blocking=True)
    slot = [0]

    def fill_reused():
        a = array.array("q", ptrs)
        ctypes.memmove(reused.data_ptr(), a.buffer_info()[0], len(ptrs) * 8)
        table.copy_(reused, non_blocking=True)

    def ring_stage():
        slot[0] = (slot[0] + 1) % 512
        host = ring[slot[0]]
        host.copy_(stats, non_blocking=True)
        event.record()

    def fresh_stage():
        host = torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)
        host.copy_(stats, non_blocking=True)
        torch.cuda.Event(blocking=True).record()

    return {
        "upload_fresh_pinned": timed(lambda: table.copy_(torch.tensor(ptrs, dtype=torch.int64, pin_memory=True),
                                                          non_blocking=True)),
        "upload_fresh_pageable": timed(lambda: table.copy_(torch.tensor(ptrs, dtype=torch.int64), non_blocking=True)),
        "upload_reused_pageable": timed(fill_reused),
        "tensor_from_list_only": timed(lambda: torch.tensor(ptrs, dtype=torch.int64)),
        "stage_fresh_pinned_and_event": timed(fresh_stage),
        "stage_ring_view_reused_event": timed(ring_stage),
        "pinned_empty_only": timed(lambda: torch.empty(stats.shape, dtype=stats.dtype, pin_memory=True)),
        "event_create_only": timed(lambda: torch.cuda.Event(blocking=True)),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    a = ap.parse_args()
    dev = torch.device("cuda", 0)
    res = {"torch": torch.__version__, "before_compile": probes(dev)}
    train_compiled(dev)
    res["after_compile"] = probes(dev)
    print(json.dumps(res, indent=1))
    if a.out:
        with open(os.path.join(os.environ.get("OUT", "."), a.out), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
