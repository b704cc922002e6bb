"""End to end (issue 17): a guarded run that saves with plain ``torch.save`` rolls back to its last
known-good file after an injected fault and finishes. Real sidecar jar, real CPU PyTorch loop, no
in-memory snapshots: the only rollback target is the file the user's own code wrote."""
import argparse
import os
import pathlib
import time

import numpy as np

import pytest
import torch

from models import batch, make, weights_finite
from trainguard import Guard
from trainguard.checkpoints import restore
from trainguard.verdict import Action

# Known-good after 2 healthy steps; the third non-finite step in a row orders ROLLBACK.
POLICY = {"known_good_healthy_steps": 2, "max_consecutive_skips": 2, "validation_warmup_steps": 10**6,
          "clip_mode": "OFF", "max_rollbacks": 3}
STEPS, EVERY = 80, 10
POISONED = range(45, 48)  # data positions whose batches are NaN: 3 non-finite steps in a row


def _checkpoint(sidecar, run, step, timeout=60.0):
    """The sidecar's record (REST) of the run's checkpoint at ``step``, once it is KNOWN_GOOD."""
    end = time.monotonic() + timeout
    while True:
        c = [c for c in sidecar.run_info(run)["checkpoints"] if c["step"] == step]
        if c and c[0]["state"] == "KNOWN_GOOD":
            return c[0]
        if time.monotonic() > end:
            raise AssertionError(f"checkpoint of step {step} not KNOWN_GOOD after {timeout}s: {c}")
        time.sleep(0.05)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("saved_with", ["tensors", "script_args"])
def test_torchSaveRun_persistentNanBatches_rollsBackToLastKnownGoodFileAndFinishes(sidecar, saved_with):
    # prevents: a run that saves with plain torch.save having nothing to roll back to (HALT), or
    # being "rolled back" to a file that is not the newest known-good one, or to weights that are
    # not the file's; "script_args": saved as timm's CheckpointSaver does, with the script's
    # argparse.Namespace (and a path) beside the weights, which the sidecar verifies and the client
    # once refused to load (the rollback halted), and numpy's RNG state, which the sidecar once
    # refused (every such checkpoint REJECTED)
    run = f"torchsave-e2e-{saved_with}"
    extra = {"args": argparse.Namespace(lr=1e-2, model="mlp"), "output": pathlib.Path("/tmp/out"),
             "rng": {"numpy": np.random.get_state(), "loss_ema": np.float64(0.5)}} if saved_with == "script_args" else {}
    root = os.path.join(sidecar.checkpoint_root, run)
    os.makedirs(root)
    model, opt = make(lr=1e-2)
    g = Guard(model, opt, run, target=sidecar.target, deadline=5.0, mode="sync", policy=POLICY,
              snapshots=False, replay=False)

    def load_state_dict(state):  # the user's own loading code
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])

    restored = []
    g.restore_hook = lambda path, plan: restored.append(path) or restore(plan.files, load_state_dict=load_state_dict)

    saved, rollbacks, done, known_good = {}, [], [], None
    step, pos = 0, 0
    while step < STEPS:
        if pos == POISONED[0] and known_good is None:
            # the fault hits once the newest file has earned KNOWN_GOOD (verification is asynchronous)
            known_good = _checkpoint(sidecar, run, max(saved))
        x, y = batch(pos)
        if pos in POISONED:
            x = x * float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        v = g.step(step, loss)
        if v.action == Action.ROLLBACK:
            on_disk = torch.load(v.rollback.files[0], map_location="cpu", weights_only=False)  # the test trusts it
            assert _same(model.state_dict(), on_disk["model"]), "weights after the rollback are not the file's"
            got, want = opt.state_dict()["state"], on_disk["optimizer"]["state"]
            assert got.keys() == want.keys() and all(_same(got[i], want[i]) for i in want)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"non-finite weights after step {step} ({v.action.name})"
        if v.action == Action.ROLLBACK:
            assert _same(model.state_dict(), on_disk["model"]), "the ROLLBACK step updated the restored weights"
            rollbacks.append(v)
            step, pos = v.resume_step, v.rollback.resume_position
            continue
        done.append(step)
        pos += 1
        if step % EVERY == 0 and step > 0:
            path = os.path.join(root, f"ckpt-{step:05d}.pt")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "data_position": pos, **extra}, path)
            c = g.checkpoint_saved(path, step, data_position=pos)
            assert c is not None and c["checkpoint_id"], c
            saved[step] = path
        step += 1
    g.close()

    # The rollback named the newest KNOWN_GOOD torch.save file, and the client restored exactly it.
    assert len(rollbacks) == 1, [(v.step, v.action.name, v.reasons) for v in rollbacks]
    plan = rollbacks[0].rollback
    assert known_good["step"] == 40 and known_good["files"] == [saved[40]], known_good
    assert plan.checkpoint_id == known_good["id"] and plan.checkpoint_step == 40, plan
    assert plan.files == [saved[40]] and restored == [saved[40]], (plan.files, restored)
    assert g.checkpoints[40]["checkpoint_id"] == known_good["id"]  # the client's record names it too
    assert rollbacks[0].step == POISONED[-1] and plan.resume_position == POISONED[-1] + 1, plan  # bad batches skipped
    # The run finished all its steps, and kept training on the restored weights.
    assert done[-1] == STEPS - 1 and set(range(STEPS)) <= set(done)
    assert g.counters["rollbacks"] == 1
    info = sidecar.run_info(run)
    kinds = [i["kind"] for i in info["incidents"]]
    assert "ROLLBACK" in kinds and "HALT" not in kinds, kinds
    assert any(known_good["id"] in i["message"] for i in info["incidents"] if i["kind"] == "ROLLBACK")
    states = {c["step"]: c["state"] for c in info["checkpoints"]}
    assert states[40] == "KNOWN_GOOD" and states[STEPS - 10] in ("VERIFIED", "KNOWN_GOOD"), states
    x, y = batch(10**6)
    with torch.no_grad():
        assert torch.isfinite(torch.nn.functional.mse_loss(model(x), y))
