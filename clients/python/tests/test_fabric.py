"""The docs' Lightning Fabric recipe (docs/client.md, "Lightning Fabric"), run against the real
sidecar jar: the Guard built before or after ``fabric.setup``, judged after ``fabric.backward``, a
clip by value only when the verdict steps, ``fabric.save`` + ``checkpoint_saved``, and
``restore_hook = fabric.load``. A NaN step is skipped; a NaN burst rolls back to a saved step."""
import os
import time

import pytest
import torch

from lightning.fabric import Fabric

import trainguard
from models import MLP, batch, weights_finite


@pytest.mark.parametrize("order", ["guard_first", "setup_first"])
def test_the_fabric_recipe_skips_a_nan_and_rolls_back_through_fabric_load(sidecar, order):
    run = f"fabric-{order}-{time.time_ns()}"
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    kw = dict(target=sidecar.target, deadline=5.0, policy={"known_good_healthy_steps": 3}, snapshots=False,
              clipping_configured=True, replay=False)
    if order == "guard_first":
        guard = trainguard.Guard(model, optimizer, run=run, **kw)
        model, opt = fabric.setup(model, guard.wrap(optimizer))
    else:
        model, optimizer = fabric.setup(model, optimizer)
        guard = trainguard.Guard(model, optimizer, run=run, **kw)
        opt = guard.wrap(optimizer)
    root = os.path.join(sidecar.checkpoint_root, run)
    os.makedirs(root)
    state = {"model": model, "optimizer": opt}
    guard.restore_hook = lambda path, plan: fabric.load(path, state)
    saved, rollbacks, actions = {}, [], []
    for step in range(30):
        if step == 21:  # the burst comes once a saved step is known-good
            end = time.monotonic() + 60
            while time.monotonic() < end and not any(
                    c["state"] == "KNOWN_GOOD" for c in sidecar.run_info(run)["checkpoints"]):
                time.sleep(0.1)
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step == 5 or 22 <= step <= 26:
            loss = loss * float("nan")
        fabric.backward(loss)
        v = guard.step(step, loss)
        actions.append(v.action.name)
        if v.should_step:  # a SKIP/ROLLBACK left no gradients: clip_grad_value_ raises on none
            fabric.clip_gradients(model, opt, clip_val=0.5)
        opt.step()
        opt.zero_grad()
        if v.action.name == "ROLLBACK":
            want = saved[v.rollback.checkpoint_step]
            rollbacks.append(all(torch.equal(want[k], t) for k, t in model.state_dict().items()))
        assert weights_finite(model), f"non-finite weights after step {step}"
        if step % 5 == 4 and step < 20:
            path = os.path.join(root, f"step-{step}.ckpt")
            fabric.save(path, state)
            saved[step] = {k: t.clone() for k, t in model.state_dict().items()}
            guard.checkpoint_saved(path, step, data_position=step + 1)
    guard.close()
    assert actions[5] == "SKIP"
    assert rollbacks and all(rollbacks), (actions, rollbacks)  # the weights are the saved step's


def test_the_guard_saved_in_the_fabric_state_is_left_out_of_a_rollbacks_restore(sidecar):
    # prevents: fabric.load(path, state) with "guard" in the state (docs' State paragraph) restoring the guard's
    # saved state mid-rollback: its checkpoint records and counters went back, and the second rollback's LR cut
    # landed on top of the first (x0.125 of the uncut rate, not x0.25)
    run = f"fabric-guard-in-state-{time.time_ns()}"
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02)
    guard = trainguard.Guard(model, optimizer, run=run, target=sidecar.target, deadline=5.0, replay=False,
                             snapshots=False, policy={"known_good_healthy_steps": 3})
    sched = guard.wrap(torch.optim.lr_scheduler.StepLR(guard.wrap(optimizer), step_size=1000))
    model, opt = fabric.setup(model, sched.optimizer)
    state = {"model": model, "optimizer": opt, "scheduler": sched, "guard": guard}
    guard.restore_hook = lambda path, plan: fabric.load(path, state)
    root = os.path.join(sidecar.checkpoint_root, run)
    os.makedirs(root)
    for step in range(70):
        if step in (21, 51):  # each burst once a saved step after the last one is known-good
            end = time.monotonic() + 60
            while time.monotonic() < end and not any(
                    c["state"] == "KNOWN_GOOD" and c["step"] >= step - 11 for c in sidecar.run_info(run)["checkpoints"]):
                time.sleep(0.1)
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        if 22 <= step <= 26 or 52 <= step <= 56:
            loss = loss * float("nan")
        fabric.backward(loss)
        guard.step(step, loss)
        opt.step()
        sched.step()
        opt.zero_grad()
        assert weights_finite(model)
        if step % 5 == 4:
            path = os.path.join(root, f"step-{step}.ckpt")
            fabric.save(path, state)
            guard.checkpoint_saved(path, step, data_position=step + 1)
    guard.close()
    assert guard.counters["rollbacks"] == 2 and guard.counters["steps"] == 70, guard.counters
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.02 * 0.25), optimizer.param_groups[0]["lr"]
