"""Buffers a training forward writes (forward_writes.py) on CUDA, against the sidecar that
bench/gpu/sidecar-up.sh started: a MoCo-style queue the forward enqueues into is put back after a NaN
step the device gate skipped (a device flag, no host read), eager and with the compiled wrapper
handed to the Guard (inductor). CI runs the same on the CPU (tests/test_running_stats.py)."""
import os
import time

import pytest
import torch

from trainguard.guard import Guard
from models import batch
from test_running_stats import QueueNet


class BankNet(torch.nn.Module):
    """A memory bank the forward writes on the device (no host read, no graph break): keys enqueued
    at a device pointer. The bank is not read by the loss, so inductor keeps no saved tensor of it."""

    def __init__(self, size=24, dim=4):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(16, dim)
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        k = self.net(x)
        if self.training:
            with torch.no_grad():
                idx = (torch.arange(k.shape[0], device=k.device) + self.ptr) % self.bank.shape[0]
                self.bank.index_copy_(0, idx, k.detach())
                self.ptr.add_(k.shape[0]).remainder_(self.bank.shape[0])
        return k.pow(2).mean()

TARGET = os.environ.get("TG_TARGET", "unix:///tmp/tg.sock")
NAN_STEP, STEPS = 5, 12


def queue_run(guarded, compiled):
    # QueueNet's host read of its pointer breaks the graph under torch.compile, and the enqueue in the
    # second graph writes the queue the first saved for backward: torch refuses that unguarded too
    model = (BankNet() if compiled else QueueNet()).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    run_model = torch.compile(model) if compiled else model
    g = Guard(run_model, opt, f"cuda-queue-{time.time_ns()}", target=TARGET, device_gate=True, deadline=5.0,
              replay=False, policy={"clip_mode": "OFF"}) if guarded else None
    for step in range(STEPS):
        x = batch(step)[0].cuda()
        if step == NAN_STEP:
            if g is None:
                continue
            x = x * float("nan")
        loss = run_model(x)
        loss.backward()
        if g is not None:
            assert g.step(step, loss).device_gated
            g.optimizer_step()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    if g is not None:
        g.close()
        assert g.counters["skips"] == 1
    return model


@pytest.fixture
def deterministic():
    # QueueNet's enqueue (an index_put with host indices) is not deterministic on CUDA: two unguarded
    # runs differ by itself (bench/gpu/queue_determinism_probe.py); deterministic kernels make the runs comparable
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.usefixtures("deterministic")
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_queue_the_forward_writes_is_put_back_after_a_step_the_device_gate_skipped(compiled):
    want, got = queue_run(False, compiled), queue_run(True, compiled)
    written = "bank" if compiled else "queue"
    assert torch.isfinite(getattr(got, written)).all()
    assert torch.allclose(getattr(got, written), getattr(want, written)) and torch.equal(got.ptr, want.ptr)
