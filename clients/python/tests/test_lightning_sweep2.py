"""Regression tests for the second Lightning sweep (trainguard/lightning.py, audit.py, rollback.py), against
the real sidecar jar: tiny LightningModules on the CPU. Each test is one of the sweep's reproducers
turned into assertions on what the run actually did."""
import logging
import os
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchmetrics

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from models import weights_finite  # noqa: E402
from test_lightning_sweep import Net, callback, data, loader, trainer  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")


def wait_known_good(sidecar, run, tg, name, timeout=60):
    """Waits until the sidecar holds the checkpoint file ``name`` as KNOWN_GOOD; fails at once when the
    callback never registered it."""
    if not any(os.path.basename(e.get("restore") or "") == name for e in tg.guard.checkpoints.values()):
        pytest.fail(f"{name} was never registered: {tg.guard.checkpoints}")
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        seen = [(c["step"], c["state"], [os.path.basename(f) for f in c["files"]])
                for c in sidecar.run_info(run).get("checkpoints", [])]
        if any(state == "KNOWN_GOOD" and name in files for _, state, files in seen):
            return
        time.sleep(0.2)
    pytest.fail(f"{name} never became KNOWN_GOOD: {seen}")


class RollbackTargets(pl.Callback):
    """Every ROLLBACK's (step, checkpoint step); at ``wait_at`` (a training_step call) waits for a file."""

    def __init__(self, tg, sidecar, run, wait_at=None, wait_for=None):
        self.tg, self.sidecar, self.run, self.wait_at, self.wait_for = tg, sidecar, run, wait_at, wait_for
        self.targets = []

    def on_train_batch_start(self, trainer, pl_module, b, i):
        if pl_module.calls == self.wait_at:
            wait_known_good(self.sidecar, self.run, self.tg, self.wait_for)

    def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
        v = self.tg.guard.last_verdict
        if v is not None and v.action.name == "ROLLBACK" and (v.step, v.rollback.checkpoint_step) not in self.targets:
            self.targets.append((v.step, v.rollback.checkpoint_step))


def test_after_a_rollback_to_an_in_memory_snapshot_a_save_on_a_renumbered_step_is_still_registered(sidecar):
    # Prevents: an in-memory rollback leaving the abandoned timeline's checkpoint entries in guard.checkpoints,
    # so step=15.ckpt (renumbered step 4, the number of the abandoned step=5.ckpt) was never registered and
    # the next NaN burst rolled back to the untrained start (step -1)
    run = "sweep2-renumbered-save"
    tg = callback(sidecar, run, policy={"spike_warmup_steps": 8, "known_good_healthy_steps": 2})
    watch = RollbackTargets(tg, sidecar, run, wait_at=20, wait_for="step=15.ckpt")
    mc = ModelCheckpoint(dirpath=os.path.join(sidecar.checkpoint_root, run), every_n_train_steps=5, save_top_k=-1,
                         filename="{step}")
    m = Net(nan_loss_at=set(range(6, 10)) | set(range(20, 24)))
    trainer([tg, watch, mc], max_steps=30, enable_checkpointing=True).fit(m, train_dataloaders=loader(data(30)))
    # the first burst: no checkpoint on disk is known-good yet, the run's initial in-memory snapshot is
    assert watch.targets[0] == (9, -1), watch.targets
    assert tg.guard.recovery.counters["snapshot_restores"] >= 1
    # the second burst goes back to step=15.ckpt (renumbered step 4), saved after the first rollback
    assert watch.targets[1][1] == 4, watch.targets
    assert os.path.basename(tg.guard.checkpoints[4]["restore"]) == "step=15.ckpt", tg.guard.checkpoints
    assert weights_finite(m)


def test_a_weights_only_model_checkpoint_is_named_once_as_no_rollback_target(sidecar, caplog):
    # Prevents: ModelCheckpoint(save_weights_only=True) registering nothing (Lightning calls no callback's
    # on_save_checkpoint for it) without a word, so a rollback went to the untrained start unexplained
    run = "sweep2-weights-only"
    tg = callback(sidecar, run)
    dirpath = os.path.join(sidecar.checkpoint_root, run)
    mc = ModelCheckpoint(dirpath=dirpath, every_n_train_steps=2, save_top_k=-1, save_weights_only=True)
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        trainer([tg, mc], max_steps=6, enable_checkpointing=True).fit(Net(), train_dataloaders=loader(data(6)))
    said = [r.getMessage() for r in caplog.records if "save_weights_only" in r.getMessage()]
    assert len(said) == 1, said
    assert dirpath in said[0] and "no rollback targets" in said[0] and "optimizer" in said[0], said[0]
    assert len([f for f in os.listdir(dirpath) if f.endswith(".ckpt")]) == 3  # Lightning saved them ...
    assert tg.guard.checkpoints == {}  # ... and none is a rollback target


class WithMetric(Net):
    """The torchmetrics pattern: a metric module updated in validation_step and logged as an object;
    ``harm``: validation_step also writes into a parameter."""

    def __init__(self, harm=False):
        super().__init__()
        self.val_mae = torchmetrics.MeanAbsoluteError()
        self.harm = harm

    def validation_step(self, b, i):
        x, y = b
        if self.harm:
            with torch.no_grad():
                self.net.out.bias.add_(0.5)
        p = self(x)
        self.val_mae(p, y)
        self.log("val_mae", self.val_mae)
        self.log("val_loss", F.mse_loss(p, y))


@pytest.mark.parametrize("harm", [False, True], ids=["metric-only", "metric-and-a-weight"])
def test_a_torchmetrics_metric_updated_in_validation_is_no_incident_but_a_written_weight_still_is(sidecar, harm):
    # Prevents: self.val_mae(p, y); self.log("val_mae", self.val_mae) reported at every validation as a
    # VALIDATION_MUTATION ("val_mae._update_count 0 -> 3, sum_abs_error replaced"), while the metric's
    # exclusion must not hide a validation that writes into the model
    run = f"sweep2-torchmetrics-{harm}"
    tg = callback(sidecar, run, policy={"validation_warmup_steps": 0, "validation_interval_steps": 1})
    m = WithMetric(harm=harm)
    d = data(10)
    trainer([tg], max_steps=10, val_check_interval=5, limit_val_batches=3).fit(
        m, train_dataloaders=loader(d), val_dataloaders=loader(d[:3]))
    assert [s for s, ok, _ in tg.validations] == [5, 10], tg.validations
    details = [audit["details"] for _, _, audit in tg.validations]
    kinds = [i["kind"] for i in sidecar.run_info(run)["incidents"]]
    if harm:
        assert details == [["net.out.bias values changed"]] * 2, details
        assert kinds.count("VALIDATION_MUTATION") == 2
    else:
        assert details == [[], []], details
        assert "VALIDATION_MUTATION" not in kinds and tg.guard.counters["validation_incidents"] == 0
    assert "val_mae" in m.trainer.callback_metrics  # the metric still reached Lightning's logging


class LearnedScaleMAE(torchmetrics.MeanAbsoluteError):
    """A metric with a parameter of its own: a parameter, even a metric's, is the model's state."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))


def test_a_metric_modules_state_is_not_audited_but_its_parameters_are():
    # Prevents: the torchmetrics exclusion opening a hole in the plain validation audit: a write into a
    # parameter held by a Metric module must still be seen and undone
    from trainguard.audit import ModelSnapshot
    model = torch.nn.Module()
    model.net = torch.nn.Linear(4, 1)
    model.mae = LearnedScaleMAE()
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    snap = ModelSnapshot(model)
    model.mae(model.net(x), y)  # updates sum_abs_error, total, _update_count, the forward cache
    assert snap.diff() == (False, False, False, False, [])
    with torch.no_grad():
        model.mae.scale.mul_(2.0)
    params, _, _, _, details = snap.diff()
    assert params and details == ["mae.scale values changed"], details
    snap.restore()
    assert float(model.mae.scale) == 1.0
    assert int(model.mae.total) == 8  # the metric's own state is left as validation made it


class HarmsInValidation(pl.LightningModule):
    """lr 0: the weights change only through validation_step, which writes into the output bias."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(16, 1)
        self.bias_at_train_start = None

    def training_step(self, b, i):
        return F.mse_loss(self.net(b[0]), b[1])

    def validation_step(self, b, i):
        with torch.no_grad():
            self.net.bias.add_(1.0)
        self.log("val_loss", F.mse_loss(self.net(b[0]), b[1]))

    def on_train_start(self):
        self.bias_at_train_start = float(self.net.bias)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_damage_during_lightnings_sanity_check_is_audited_and_undone(sidecar):
    # Prevents: validation_step writing into the model during the default sanity check
    # (num_sanity_val_steps=2, before step 0) neither reported nor undone, so training began from damaged weights
    run = "sweep2-sanity-check"
    tg = callback(sidecar, run, policy={"validation_warmup_steps": 0, "validation_interval_steps": 1})
    m = HarmsInValidation()
    initial = float(m.net.bias)
    d = data(10)
    t = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   enable_checkpointing=False, callbacks=[tg], max_steps=10, val_check_interval=5,
                   limit_val_batches=2)  # num_sanity_val_steps left at Lightning's default
    assert t.num_sanity_val_steps == 2
    t.fit(m, train_dataloaders=loader(d), val_dataloaders=loader(d[:2]))
    assert m.bias_at_train_start == initial  # the sanity check's writes were undone before step 0
    assert tg.sanity_check["parameters_changed"] and tg.sanity_check["restored"], tg.sanity_check
    assert tg.sanity_check["details"] == ["net.bias values changed"]
    # not a validation of the run: the sidecar's record holds the two real passes only
    assert [s for s, _, _ in tg.validations] == [5, 10], tg.validations
    assert tg.guard.counters["validation_incidents"] == 3
    assert float(m.net.bias) == initial
    # the sidecar records the sanity check's damage too (an incident at step 0, beside the two passes')
    mutations = sorted(i["step"] for i in sidecar.run_info(run)["incidents"] if i["kind"] == "VALIDATION_MUTATION")
    assert mutations == [0, 5, 10], mutations


class ScalerAtRestore(pl.Callback):
    """The GradScaler's state before each step, and at a rollback's load (other callbacks'
    on_load_checkpoint run after the scaler is restored) next to the one the checkpoint saved."""

    def __init__(self):
        self.last, self.restores = None, []

    def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
        self.last = trainer.precision_plugin.scaler.state_dict()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.restores.append((self.last, trainer.precision_plugin.scaler.state_dict(), checkpoint["MixedPrecision"]))


def test_a_rollback_to_a_lightning_checkpoint_restores_the_grad_scaler(sidecar):
    # Prevents: the rollback reading Lightning 1.x's "native_amp_scaling_state", absent from Lightning 2.x
    # checkpoints (saved as "MixedPrecision"), so the scale and growth tracker of the abandoned steps stayed
    from lightning.pytorch.plugins import MixedPrecision
    run = "sweep2-scaler"
    tg = callback(sidecar, run, snapshots=False, policy={"known_good_healthy_steps": 2})
    probe = ScalerAtRestore()
    watch = RollbackTargets(tg, sidecar, run, wait_at=22, wait_for="epoch=0-step=20.ckpt")
    scaler = torch.amp.GradScaler("cpu", growth_interval=5)
    mc = ModelCheckpoint(dirpath=os.path.join(sidecar.checkpoint_root, run), every_n_train_steps=5, save_top_k=-1)
    t = trainer([tg, watch, probe, mc], max_steps=30, enable_checkpointing=True,
                plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    m = Net(nan_loss_at=set(range(22, 26)))
    t.fit(m, train_dataloaders=loader(data(30)))
    assert watch.targets and watch.targets[0][1] == 19, watch.targets
    before, after, saved = probe.restores[0]
    assert before != saved  # the scaler moved on after the save (else the test could not tell)
    assert after == saved, (before, after, saved)
    assert weights_finite(m)


class WritesInEveryPass(Net):
    """validation_step, test_step and predict_step each add 1 to the first layer's bias."""

    def _harm(self):
        with torch.no_grad():
            next(self.net.parameters()).add_(1.0)

    def validation_step(self, b, i):
        self._harm()
        return super().validation_step(b, i)

    def test_step(self, b, i):
        self._harm()

    def predict_step(self, b, i, dataloader_idx=0):
        self._harm()
        return self(b[0])


@pytest.mark.parametrize("call", ["validate", "test", "predict"])
def test_a_validate_test_or_predict_outside_fit_that_writes_into_the_model_is_undone_and_said(sidecar, call, caplog):
    # Prevents: trainer.validate() before fit (or test/predict) leaving its damage, so fit started from it unnoticed
    tg = callback(sidecar, f"sweep5-outside-fit-{call}-{time.time_ns()}")
    m = WritesInEveryPass()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    t = trainer([tg], max_steps=2)
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        getattr(t, call)(m, loader(data(3)))
    for k, v in before.items():
        assert torch.equal(m.state_dict()[k], v), f"{k} kept the damage of trainer.{call}()"
    said = [r.getMessage() for r in caplog.records if f"trainer.{call}() changed the model" in r.getMessage()]
    assert len(said) == 1 and "values changed" in said[0] and "undone" in said[0], said


class RaisesAt(pl.Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, b, i):
        if trainer.global_step == self.at:
            raise RuntimeError("data loader worker died")


def test_a_fit_that_raises_leaves_its_run_open_and_a_restart_with_the_same_run_id_resumes_it(sidecar):
    # Prevents: on_exception closing the run, so a restart (torchrun --max-restarts, a retry) reopening the
    # same run id got RunRefused, a hard error even in fail-open mode
    run = f"sweep5-raises-{time.time_ns()}"
    m = Net()
    with pytest.raises(RuntimeError, match="worker died"):
        trainer([callback(sidecar, run), RaisesAt(5)], max_steps=10).fit(m, loader(data(10)))
    info = sidecar.run_info(run)["run"]
    assert info["state"] != "CLOSED" and info["lastStep"] >= 3, info
    tg = callback(sidecar, run)
    trainer([tg], max_steps=10).fit(m, loader(data(10)))
    info = sidecar.run_info(run)["run"]
    assert info["state"] == "CLOSED" and info["stateReason"] == "training finished", info
    assert tg.guard.counters["steps"] >= 10 and weights_finite(m)
