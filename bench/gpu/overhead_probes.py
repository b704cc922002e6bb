"""Probes for the GPU benches: the client's per-step pieces timed (overhead.py, hf_segments.py);
for overhead.py also the garbage collector's clock, a guard that sends nothing, and the sanity check
of the guarded path on the bench's own model (no host sync, a NaN gated, the counters)."""
import gc
import threading
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


class PieceClock:
    """Wall clocks around the client's per-step pieces (bench instrumentation only).

    A call is charged to ``key``, what runs now (overhead.py: the variant; hf_segments.py: the
    phase; None: nothing is counted), with the loop's ``step`` (None outside the timed steps). Calls
    on the thread that built the clock go to ``samples``; calls on any other thread (the sender,
    autograd's thread at backward end) are kept as (label, start, end) in ``other`` instead, since
    they do not add to the training thread's time."""

    PIECES = [("gated", "await_verdicts", "await_verdicts"), ("gated", "step", "gated_step"),
              ("graphs", "measure_and_install", "measure_and_gate"),  # the graph replay, or the two below
              ("meter", "on_device", "measure_on_device"), ("gate", "install", "gate_install"),
              ("gate", "stage", "gate_stage"), ("sender", "submit_deferred", "submit"),
              ("recovery", "begin", "recovery_begin"), ("recovery", "after_update", "recovery_after_update"),
              ("guard", "_finish", "finish"), ("guard", "optimizer_step", "optimizer_step"),
              # inside measure_and_gate, the graph path
              ("meter", "take_watch", "mg_take_watch"), ("graphs", "_key", "mg_key"),
              ("graphs", "_load", "mg_load"), ("gate", "point", "mg_point")]

    def __init__(self):
        self.samples = {}  # key -> piece -> [(step, seconds)]
        self.other = []    # (label, start, end) of the calls on other threads
        self.key = None
        self.step = None
        self.main = threading.get_ident()

    def attach(self, g):
        """Times ``PIECES`` of the Guard ``g``."""
        owners = {"gated": g.gated, "graphs": g.gated.graphs, "meter": g.meter, "gate": g.gate,
                  "sender": g.sender, "recovery": g.recovery, "guard": g}
        for owner, attr, label in self.PIECES:
            self.wrap(owners[owner], attr, label)

    def wrap(self, obj, attr, label):
        fn = getattr(obj, attr, None)
        if fn is not None:
            setattr(obj, attr, self._timed(fn, label))

    def wrap_class(self, cls, attr, label):
        """A method of every instance (the function binds as a method)."""
        setattr(cls, attr, self._timed(getattr(cls, attr), label))

    def _timed(self, fn, label):
        def timed_fn(*args, **kw):
            key = self.key
            if key is None:
                return fn(*args, **kw)
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                if threading.get_ident() == self.main:
                    self.samples.setdefault(key, {}).setdefault(label, []).append((self.step, time.perf_counter() - t))
                else:
                    self.other.append((label, t, time.perf_counter()))
        return timed_fn

    def clear(self):
        self.samples.clear()
        self.other.clear()

    def per_step_us(self, key, steps):
        """piece -> µs per step (the mean over ``steps`` steps)."""
        return {label: sum(d for _, d in xs) / steps * 1e6 for label, xs in self.samples.get(key, {}).items()}

    def spread(self, key):
        """piece -> how its time spreads over the calls: a steady cost or rare long calls."""
        out = {}
        for label, xs in self.samples.get(key, {}).items():
            ds = sorted(d for _, d in xs)
            total = sum(ds) or 1.0
            out[label] = {"calls": len(ds), "p50_us": ds[len(ds) // 2] * 1e6, "p90_us": ds[int(len(ds) * 0.9)] * 1e6,
                          "max_us": ds[-1] * 1e6, "first_step_share": sum(d for i, d in xs if i == 0) / total,
                          "top5pct_share": sum(ds[int(len(ds) * 0.95):]) / total}
        return out


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


class SnapshotCopies:
    """What a snapshot does on the device, alone (overhead.py's d2h variant): the device tensors a
    take would copy (found as a take finds them, trainguard.snapshot_layout.gather) copied into
    staging buffers on the training stream, then to pinned host memory on a side stream, as
    SnapshotStore._take_staged does, with none of the guard's host-side take."""

    def __init__(self, device):
        self.device, self._staging, self._done, self._layout = device, None, None, None

    def copy(self, model, optimizer):
        from trainguard.snapshot_layout import gather
        from trainguard.snapshot_staging import DeviceStaging
        # the last layout kept, as a take keeps it (laid out afresh, every copy paid ~2.5 ms of host time)
        self._layout, uniq, _ = gather(model, optimizer, None, None, self.device, last=self._layout)
        state = [uniq[i] for i in self._layout.here]
        if self._staging is None:  # laid out at the first copy, when the optimizer state exists
            self._staging = DeviceStaging(state, self.device)
            self._host = self._staging.host_buffers(True)[0]
            self._stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        if self._done is not None:
            main.wait_event(self._done)  # the last copy out still reads the staging buffers
        self._staging.copy_in(state)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            self._staging.copy_out(self._host)
            self._done = torch.cuda.Event()
            self._done.record(self._stream)
