"""A rollback target damaged on disk after it was registered (sweep 11), against the real sidecar jar:
the trainer loads nothing that changed since, tells the sidecar (RestoreFailed), and the run rolls
back to the next older known-good checkpoint, or halts, with the record saying so. Before, the client
halted on its own (the run stayed ROLLING_BACK, the damaged checkpoint KNOWN_GOOD), and a file
rewritten with finite values was loaded without a word."""
import os
import time

import pytest
import torch

from models import batch, make, weights_finite
from trainguard import Guard, TrainingHalted
from trainguard.checkpoints import restore
from trainguard.verdict import Action

POLICY = {"known_good_healthy_steps": 2, "max_consecutive_skips": 2, "clip_mode": "OFF",
          "validation_warmup_steps": 10**6}


def known_good(sidecar, run, step, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        c = [c for c in sidecar.run_info(run)["checkpoints"] if c["step"] == step]
        if c and c[0]["state"] == "KNOWN_GOOD":
            return c[0]
        time.sleep(0.05)
    raise AssertionError(f"checkpoint of step {step} not KNOWN_GOOD after {timeout}s")


def damage(path, how):
    if how == "deleted":
        os.remove(path)
    elif how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:  # one byte of a weight rewritten in place: still finite, no longer what was verified
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) - 3)
            b = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([b[0] ^ 0x01]))


def train_to_a_burst(sidecar, run, saves, save, spoil):
    """Healthy steps that save at ``saves`` (each KNOWN_GOOD before the next), ``spoil()`` once the last
    is, then NaN steps until the guard orders a rollback; returns (guard, model, the ROLLBACK verdict or
    the TrainingHalted raised, the weights saved per step)."""
    model, opt = make(lr=1e-2)
    g = Guard(model, opt, run, target=sidecar.target, deadline=5.0, mode="sync", policy=POLICY,
              snapshots=False, replay=False)
    weights, step = {}, 0
    while step <= saves[-1] + 3:
        x, y = batch(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        g.step(step, None)
        g.optimizer_step()
        opt.zero_grad()
        if step in saves:
            save(g, model, opt, step)
            weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
        if step - 2 in saves:
            known_good(sidecar, run, step - 2)
        step += 1
    spoil()
    while True:
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x * float("nan")), y)
        loss.backward()
        try:
            v = g.step(step, loss)
        except TrainingHalted as halted:
            return g, model, halted, weights
        g.optimizer_step()
        opt.zero_grad()
        if v.action == Action.ROLLBACK:
            return g, model, v, weights
        step += 1


def state_of(sidecar, run, step):
    return [c for c in sidecar.run_info(run)["checkpoints"] if c["step"] == step][0]


@pytest.mark.parametrize("how", ["deleted", "truncated", "rewritten"])
def test_a_damaged_newest_target_gives_way_to_the_next_older_known_good_one(sidecar, how):
    run = f"damaged-{how}-{time.time_ns()}"
    root = os.path.join(sidecar.checkpoint_root, run)

    def save(g, model, opt, step):
        g.save_checkpoint(os.path.join(root, f"step-{step}"), step)

    def spoil():  # after the sidecar verified it and made it KNOWN_GOOD
        newest = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "step-12")) for f in fs
                  if f == "model.safetensors"]
        damage(newest[0], how)

    g, model, v, weights = train_to_a_burst(sidecar, run, (6, 12), save, spoil)
    assert isinstance(v, object) and v.action == Action.ROLLBACK, v
    assert v.rollback.checkpoint_step == 6 and v.resume_step == 7, v
    assert all(torch.equal(model.state_dict()[k], weights[6][k]) for k in weights[6])
    assert weights_finite(model)
    g.close()
    damaged = state_of(sidecar, run, 12)
    assert damaged["state"] == "EVICTED" and "could not be restored" in damaged["stateReason"], damaged
    said = [i["message"] for i in sidecar.run_info(run)["incidents"] if "could not be restored" in i["message"]]
    assert said and "rolling back to checkpoint" in said[0], said


def test_the_only_target_damaged_halts_the_run_on_the_record(sidecar):
    run = f"damaged-only-{time.time_ns()}"
    path = os.path.join(sidecar.checkpoint_root, run, "ckpt-6.pt")
    os.makedirs(os.path.dirname(path))

    def save(g, model, opt, step):
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
        g.checkpoint_saved(path, step)
        g.restore_hook = lambda p, plan: restore(plan.files, load_state_dict=lambda s: model.load_state_dict(s["model"]))

    g, model, halted, _ = train_to_a_burst(sidecar, run, (6,), save, lambda: os.remove(path))
    assert isinstance(halted, TrainingHalted), halted
    assert "is gone, deleted since it was registered" in str(halted), str(halted)
    assert weights_finite(model)
    info = sidecar.run_info(run)
    assert info["run"]["state"] == "HALTED", info["run"]
    assert state_of(sidecar, run, 6)["state"] == "EVICTED"
    g.close(close_run=False)
