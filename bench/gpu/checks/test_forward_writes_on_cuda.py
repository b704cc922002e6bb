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

TARGET = os.environ.get("TG_TARGET", "unix:///tmp/tg.sock")
NAN_STEP, STEPS = 5, 12


def queue_run(guarded, compiled):
    model = QueueNet().cuda()
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


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_queue_the_forward_writes_is_put_back_after_a_step_the_device_gate_skipped(compiled):
    want, got = queue_run(False, compiled), queue_run(True, compiled)
    assert torch.isfinite(got.queue).all()
    assert torch.allclose(got.queue, want.queue) and torch.equal(got.ptr, want.ptr)
