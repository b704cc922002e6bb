"""What the module watch keeps alive on the CPU (issue 21, the batched statistics' review): three
cases where outputs a forward made must not outlive it because of the watch.

- ``raised``:    a forward that raises after four watched blocks (an OOM-retry or skip-bad-batch loop);
                 MB of its 4096-row activations alive afterwards;
- ``reentrant``: six blocks under reentrant activation checkpointing; MB alive after backward;
- ``inner``:     watched Linears inside non-reentrant checkpointed blocks; MB of their 4096x1024
                 outputs alive at the end of the checkpointed forward (what checkpointing frees).

Usage: python3 bench/client/watch_memory.py [--client PATH]   (PATH: a clients/python folder; default
this checkout's). The first version of the batched watch, for comparison:
    git archive 19ba11d clients/python | tar -x -C /tmp/old && python3 bench/client/watch_memory.py --client /tmp/old/clients/python
"""
import argparse
import gc
import os
import sys

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))


def alive_mb(shape_ok):
    gc.collect()
    return sum(t.numel() * t.element_size() for t in gc.get_objects()
               if torch.is_tensor(t) and t.dim() == 2 and shape_ok(t.shape)) / 2 ** 20


def rows(shape):
    return shape[0] == 4096


def raised(ModuleWatch, auto_watch):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(256, 256), nn.GELU()) for _ in range(4)])

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            raise RuntimeError("out of memory (simulated)")
    m = M()
    watch = ModuleWatch(m, auto_watch(m))
    try:
        m(torch.randn(4096, 256))
    except RuntimeError:
        pass
    return alive_mb(rows), watch


def reentrant(ModuleWatch, auto_watch):
    m = nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 256)) for _ in range(6)])

    class Ckpt(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = m

        def forward(self, x):
            for b in self.blocks:
                x = checkpoint(b, x, use_reentrant=True)
            return x
    model = Ckpt()
    watch = ModuleWatch(model, auto_watch(model))
    model(torch.randn(4096, 256, requires_grad=True)).sum().backward()
    return alive_mb(rows), watch


def inner(ModuleWatch, auto_watch):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256))
                                         for _ in range(6)])

        def forward(self, x):
            for b in self.blocks:
                x = checkpoint(b, x, use_reentrant=False)
            self.alive = alive_mb(lambda s: tuple(s) == (4096, 1024))
            return x
    m = M()
    watch = ModuleWatch(m, [f"blocks.{i}.{j}" for i in range(6) for j in (0, 1)])
    m(torch.randn(4096, 256, requires_grad=True)).sum().backward()
    return m.alive, watch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", default=os.path.join(HERE, "..", "..", "clients", "python"))
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.client))
    from trainguard.stats import ModuleWatch
    from trainguard.watch_names import auto_watch
    torch.manual_seed(0)
    for case in (raised, reentrant, inner):
        mb, watch = case(ModuleWatch, auto_watch)
        print(f"{case.__name__:10s} {mb:6.1f} MB alive, {len(getattr(watch, '_kept', []))} outputs kept", flush=True)


if __name__ == "__main__":
    main()
