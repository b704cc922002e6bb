"""BatchNorm's running statistics across a skipped step, against the real sidecar jar: the forward of
a NaN batch writes NaN into them before anything is judged, and a skip must not keep that."""
import time

import pytest
import torch
from torch import nn

from models import batch, guarded_update
from trainguard import Action
from trainguard.guard import Guard

NAN_STEP = 6


def conv_net(momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32, momentum=momentum), nn.ReLU(), nn.Linear(32, 1))


def stats(model):
    bn = model[1]
    return bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()


def run(sidecar, guarded, device_gate=False, steps=10, momentum=0.1):
    """A plain loop over ``steps`` batches; the NAN_STEP batch is NaN. Unguarded, that batch is
    left out entirely (what a perfect skip would give). Returns the model and the verdicts."""
    model = conv_net(momentum)
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True) if device_gate
           else torch.optim.AdamW(model.parameters(), lr=1e-2))  # torch 1.13 knows no fused=
    g = Guard(model, opt, f"bn-{device_gate}-{time.time_ns()}", target=sidecar.target, deadline=5.0,
              device_gate=device_gate, replay=False, policy={"clip_mode": "OFF"}) if guarded else None
    actions = []
    for step in range(steps):
        x, y = batch(step)
        if step == NAN_STEP:
            if g is None:
                continue
            x = x * float("nan")
        guarded_update(g, opt, step, nn.functional.mse_loss(model(x), y), actions)
    if g is not None:
        g.close()
    return model, actions


@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
@pytest.mark.parametrize("device_gate", [False, pytest.param(True, marks=pytest.mark.torch2)],
                         ids=["host", "device_gate"])
def test_a_skipped_nan_batch_leaves_batchnorm_statistics_as_if_it_never_ran(sidecar, device_gate, momentum):
    # Prevents: a NaN batch skipped (weights untouched) whose forward had written NaN into
    # running_mean/var: training went on looking healthy and the model evaluated to NaN everywhere.
    # And its count kept in num_batches_tracked, by which BatchNorm(momentum=None) averages.
    want, _ = run(sidecar, guarded=False, device_gate=device_gate, momentum=momentum)  # the same optimizer
    got, actions = run(sidecar, guarded=True, device_gate=device_gate, momentum=momentum)
    if not device_gate:
        assert actions[NAN_STEP] == Action.SKIP
    for a, b in zip(stats(got), stats(want)):
        assert torch.equal(a, b)
    got.eval()
    assert torch.isfinite(got(batch(0)[0])).all()


class QueueNet(nn.Module):
    """MoCo's pattern in small: each training forward enqueues its batch's keys into a buffer queue (and moves
    a pointer buffer); the loss contrasts the batch with the queue, so NaN keys left there poison later steps."""

    def __init__(self, size=24, dim=4):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(16, dim)
        self.register_buffer("queue", torch.randn(size, dim) * 0.1)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        k = self.net(x)
        logits = k @ self.queue.clone().t()  # as MoCo: the enqueue below writes the buffer in place
        if self.training:
            with torch.no_grad():
                n, p = k.shape[0], int(self.ptr)
                idx = (torch.arange(n) + p) % self.queue.shape[0]
                self.queue[idx] = k.detach()
                self.ptr.fill_((p + n) % self.queue.shape[0])
        return logits.logsumexp(dim=1).mean()


def queue_run(sidecar, guarded, step_buffers):
    model = QueueNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = Guard(model, opt, f"queue-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
              policy={"clip_mode": "OFF"}, step_buffers=[model.queue, model.ptr] if step_buffers else ()) \
        if guarded else None
    actions = []
    for step in range(10):
        x, _ = batch(step)
        if step == NAN_STEP:
            if g is None:
                continue
            x = x * float("nan")
        guarded_update(g, opt, step, model(x), actions)
    if g is not None:
        g.close()
    return model, actions


def test_buffers_given_as_step_buffers_are_put_back_after_a_skipped_step_as_if_it_never_ran(sidecar):
    # Prevents: a skipped NaN batch leaving its NaN keys in a MoCo-style queue, so the next steps were NaN
    # too and the run rolled back to its start
    want, _ = queue_run(sidecar, guarded=False, step_buffers=True)
    got, actions = queue_run(sidecar, guarded=True, step_buffers=True)
    assert actions[NAN_STEP] == Action.SKIP and all(a == Action.APPLY for a in actions[NAN_STEP + 1:]), actions
    assert torch.equal(got.queue, want.queue) and torch.equal(got.ptr, want.ptr)
    _, without = queue_run(sidecar, guarded=True, step_buffers=False)
    assert without[NAN_STEP + 1] != Action.APPLY, without  # what the queue's NaN keys do when left there
