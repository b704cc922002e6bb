"""Which ModelCheckpoint files TrainguardCallback registers, and that a rollback only loads a file
still holding the state the sidecar verified (trainguard/lightning_checkpoints.py). Real sidecar,
a real Lightning Trainer on a tiny model (CPU); a NaN burst forces each rollback."""
import logging
import os
import time
import warnings

import pytest
import torch

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

from models import batch, weights_finite  # noqa: E402
from test_lightning_sweep import Net  # noqa: E402  (a NaN loss at given training_step calls)

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")

POLICY = {"known_good_healthy_steps": 3}


def wait_for_checkpoint(sidecar, run, step, states, timeout=90):
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        seen = [(c["step"], c["state"]) for c in sidecar.run_info(run).get("checkpoints", [])]
        if (step, "REJECTED") in seen:
            pytest.fail(f"the sidecar rejected the checkpoint of step {step}: {seen}")
        if any(s == step and state in states for s, state in seen):
            return
        time.sleep(0.2)
    pytest.fail(f"the checkpoint of step {step} never reached {states}: {seen}")


class FirstRollback(pl.Callback):
    """Holds training at given calls until the sidecar has a checkpoint in a state (so the burst's
    rollback has a known target), and records the first ROLLBACK: its step, the file the callback
    restored, and whether the weights now equal that file's."""

    def __init__(self, tg, sidecar, run, waits):
        self.tg, self.sidecar, self.run, self.waits = tg, sidecar, run, waits  # {call: (step, states)}
        self.rollback = None
        self.registered = set()  # every file the guard ever held as a rollback target

    def on_train_batch_start(self, trainer, pl_module, b, i):
        self.registered |= {e.get("restore") for e in self.tg.guard.checkpoints.values()}
        if pl_module.calls in self.waits:
            wait_for_checkpoint(self.sidecar, self.run, *self.waits[pl_module.calls])

    def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
        v = self.tg.guard.last_verdict
        if self.rollback is None and v is not None and v.action.name == "ROLLBACK":
            step = v.rollback.checkpoint_step
            path = self.tg.guard.checkpoints[step]["restore"]
            saved = torch.load(path, map_location="cpu", weights_only=False)
            now = pl_module.state_dict()
            trained = saved.get("current_model_state", saved["state_dict"])  # EMA: the averaged ones are state_dict
            self.rollback = {"step": step, "file": os.path.basename(path), "global_step": saved["global_step"],
                             "weights_equal": all(torch.equal(saved["state_dict"][k], now[k]) for k in now),
                             "trained_weights_equal": all(torch.equal(trained[k], now[k]) for k in now)}


def fit(sidecar, run, checkpoints, burst, waits, max_steps):
    from trainguard.lightning import TrainguardCallback
    tg = TrainguardCallback(run, target=sidecar.target, deadline=5.0, snapshots=False, policy=POLICY)
    watch = FirstRollback(tg, sidecar, run, waits)
    t = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, callbacks=[tg, watch, *checkpoints],
                   logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    m = Net(nan_loss_at=burst)
    t.fit(m, train_dataloaders=torch.utils.data.DataLoader([batch(i) for i in range(max_steps)], batch_size=None))
    return tg, watch, m


def test_save_last_rollback_restores_the_registered_step_file_not_the_rewritten_last_ckpt(sidecar):
    # Prevents: last.ckpt registered as step 4's known-good checkpoint, then rewritten by every later
    # save, so a rollback "to step 4" loaded the unverified state of global step 10
    run = "lightning-save-last"
    root = os.path.join(sidecar.checkpoint_root, "save-last")
    ckpt = ModelCheckpoint(dirpath=root, every_n_train_steps=5, save_top_k=-1, save_last=True)
    # step 4's file (global step 5) becomes KNOWN_GOOD before step 9 saves; the burst (4 skips, limit 3)
    # leaves step 9 unproven, so the rollback targets step 4
    tg, watch, m = fit(sidecar, run, [ckpt], burst=set(range(11, 16)), waits={9: (4, {"KNOWN_GOOD"})}, max_steps=24)
    rb = watch.rollback
    assert rb is not None, tg.verdicts
    assert rb["step"] == 4 and rb["file"] == "epoch=0-step=5.ckpt", rb
    assert rb["global_step"] == 5 and rb["weights_equal"], rb
    last = torch.load(os.path.join(root, "last.ckpt"), map_location="cpu", weights_only=False)
    assert last["global_step"] > 5  # what the old code restored instead
    assert not any(p and os.path.basename(p) == "last.ckpt" for p in watch.registered), watch.registered
    assert weights_finite(m)


def test_a_registered_file_rewritten_in_place_is_not_loaded_the_rollback_falls_back_to_an_older_one(sidecar,
                                                                                                      caplog):
    # Prevents: a rollback loading a file ModelCheckpoint rewrote after it was registered (a fixed
    # filename with save_top_k=1 is overwritten in place at every save), i.e. a later, unverified state
    run = "lightning-rewritten"
    root = os.path.join(sidecar.checkpoint_root, "rewritten")
    rolling = ModelCheckpoint(dirpath=root, filename="rolling", every_n_train_steps=3, save_top_k=1)
    kept = ModelCheckpoint(dirpath=root, every_n_train_steps=8, save_top_k=-1)  # global steps 8, 16
    # step 11's rolling.ckpt is verified before step 14 rewrites it; the sidecar then evicts it (the
    # same path registered again), so the burst's rollback goes to step 7, the newest intact checkpoint
    # (the client's own identity check would refuse rolling.ckpt too: rewritten since it was registered)
    waits = {12: (11, {"VERIFIED", "KNOWN_GOOD"}), 15: (7, {"KNOWN_GOOD"})}
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        tg, watch, m = fit(sidecar, run, [rolling, kept], burst=set(range(16, 21)), waits=waits, max_steps=24)
    rb = watch.rollback
    assert rb is not None, tg.verdicts
    assert rb["step"] == 7 and rb["file"] == "epoch=0-step=8.ckpt", rb  # the newest older intact checkpoint
    assert rb["global_step"] == 8 and rb["weights_equal"], rb
    evicted = {c["step"]: c["stateReason"] for c in sidecar.run_info(run)["checkpoints"] if c["state"] == "EVICTED"}
    assert "written again by the checkpoint of step 14" in evicted.get(11, ""), evicted
    # the rollback's own line names the file it restored, not the plan's rewritten one
    assert any(r.message.startswith("trainguard: rolled back to step 7 (") and "epoch=0-step=8.ckpt" in r.message
               for r in caplog.records), [r.message for r in caplog.records]
    assert weights_finite(m)


def test_a_rollback_under_ema_weight_averaging_restores_the_trained_weights_not_the_average(sidecar):
    # Prevents: a rollback loading the checkpoint's state_dict, which EMAWeightAveraging fills with the
    # averaged weights, into the training model (its trained weights sit beside them, which Lightning's
    # own restore puts back through the callback's on_load_checkpoint)
    run = "lightning-ema"
    ckpt = ModelCheckpoint(dirpath=os.path.join(sidecar.checkpoint_root, "ema"), every_n_train_steps=5, save_top_k=-1)
    tg, watch, m = fit(sidecar, run, [EMAWeightAveraging(decay=0.5), ckpt], burst=set(range(11, 16)),
                       waits={9: (4, {"KNOWN_GOOD"})}, max_steps=24)
    rb = watch.rollback
    assert rb is not None, tg.verdicts
    assert rb["step"] == 4 and rb["trained_weights_equal"] and not rb["weights_equal"], rb
    assert weights_finite(m)


def test_a_checkpoint_registered_before_a_restart_is_restored_from_the_plans_files(tmp_path):
    # Prevents: after a crash and fit(ckpt_path=...), the checkpoint the killed process registered (the
    # one the fit resumed from, KNOWN_GOOD at the sidecar) was unknown to the new process: the rollback
    # "fell back" past it to an older one, and its log named a file it had not restored.
    from types import SimpleNamespace
    from trainguard import lightning_checkpoints as ckpts
    from trainguard.verdict import RollbackPlan
    older, target = tmp_path / "step=25.ckpt", tmp_path / "step=30.ckpt"
    older.write_bytes(b"25")
    target.write_bytes(b"30")
    guard = SimpleNamespace(checkpoints={24: {"restore": str(older), "files": [str(older)]}})
    plan = RollbackPlan(checkpoint_id="ckpt-29", checkpoint_step=29, files=[str(target)])
    entry = ckpts.entry_to_restore(guard, plan)
    assert ckpts.restorable(entry) == (str(target), "") and plan.checkpoint_step == 29
