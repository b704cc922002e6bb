"""Probes for overhead.py: the garbage collector's clock, a guard that sends nothing, and the sanity
check of the guarded path on the bench's own model (no host sync, a NaN gated, the counters)."""
import gc
import time
import warnings

import torch

from trainguard.transport import ReportFuture


def mute(g):
    """Diagnostic (tg_mute): the guard's reports are neither built nor sent, their futures done at once."""
    def submit_deferred(step, build, generation, hold=False):
        fut = ReportFuture(step, generation, False)
        fut._set()
        return fut
    g.sender.submit_deferred = submit_deferred


class GcClock:
    """Time spent in Python's cyclic garbage collector, by generation. Work that allocates container
    objects every step triggers collections, and a generation-2 one walks every tracked object (a
    compiled model's caches too): a long pause that lands in whichever round it falls."""

    def __init__(self):
        self.n, self.ms, self._t0 = [0, 0, 0], [0.0, 0.0, 0.0], None
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase, info):
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.ms[info["generation"]] += (time.perf_counter() - self._t0) * 1e3
            self.n[info["generation"]] += 1
            self._t0 = None

    def read(self):
        return self.n + self.ms


def sanity(model, opt, g, data, dev, step_no):
    out = {}
    cuda = dev.type == "cuda"
    g.resume()
    x, y = data[0]

    def step(poison=None):
        h = None
        if poison is not None:
            h = model.h[poison].mlp.register_forward_hook(lambda m, i, o: o * float("nan"))
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(x, y)
        if h is not None:
            h.remove()
        loss.backward()
        v = g.step(step_no["tg"], loss)
        step_no["tg"] += 1
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        return v

    for _ in range(3):
        step()
    if cuda:  # any synchronizing call on the training thread during guarded steps is recorded
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(5):
                    step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # torch's own "Synchronization debug mode is a prototype feature" notice is not a sync
        syncs = [str(m.message).splitlines()[0] for m in w if "called a synchronizing" in str(m.message)]
        out["host_syncs_in_5_guarded_steps"] = len(syncs)
        out["sync_messages"] = syncs[:3]
    g.flush(10)
    before = [p.detach().clone() for p in model.parameters()]
    st = [opt.state[p]["step"].clone() for p in model.parameters()][:1]
    skips0 = g.counters["skips"]
    step(poison=len(model.h) // 2)  # NaN out of a middle block
    g.flush(10)
    out["nan_block_weights_unchanged"] = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    out["nan_block_step_counter_unchanged"] = bool(torch.equal(st[0], opt.state[next(model.parameters())]["step"]))
    out["nan_block_counted_as_skip"] = g.counters["skips"] == skips0 + 1
    out["weights_finite"] = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    step()
    g.flush(10)
    out["next_step_updates"] = not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    g.pause()
    return out
