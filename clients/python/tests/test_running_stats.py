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
