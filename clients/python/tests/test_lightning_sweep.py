"""Regression tests for the Lightning fixes of the sweeps (commit dace20c and after, trainguard/lightning.py),
against the real sidecar jar: tiny LightningModules on the CPU, a few steps each. Each test is one
of the sweeps' reproducers turned into assertions on what the run actually did (the checkpoint ones
are in test_lightning_checkpoints.py)."""
import collections
import logging
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from models import MLP, batch, weights_finite  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")


VAL_CALLS = collections.Counter()


class Net(pl.LightningModule):
    """``nan_loss_at``: training_step call indices whose loss is NaN. Logs val_loss in validation_step."""

    def __init__(self, nan_loss_at=()):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP()
        self.nan_loss_at = set(nan_loss_at)
        self.calls = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, b, i):
        x, y = b
        c, self.calls = self.calls, self.calls + 1
        loss = F.mse_loss(self(x), y)
        if c in self.nan_loss_at:
            loss = loss * float("nan")
        return loss

    def validation_step(self, b, i):
        VAL_CALLS[id(self)] += 1  # counted outside the module: an attribute change is a validation incident
        x, y = b
        loss = F.mse_loss(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def data(n):
    return [batch(i) for i in range(n)]


def loader(d):
    return torch.utils.data.DataLoader(d, batch_size=None)


def trainer(callbacks, **kw):
    base = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, enable_checkpointing=False)
    base.update(kw)
    return pl.Trainer(callbacks=list(callbacks), **base)


def callback(sidecar, run, **kw):
    from trainguard.lightning import TrainguardCallback
    kw.setdefault("deadline", 5.0)
    return TrainguardCallback(run, target=sidecar.target, **kw)


def test_refused_validation_still_runs_so_monitored_val_loss_callbacks_work(sidecar):
    # Prevents: a refused validation (default policy: before step 100) no-opping validation_step, so ModelCheckpoint/EarlyStopping(monitor="val_loss") crash a healthy run
    tg = callback(sidecar, "sweep-refused-validation")  # default policy
    ckpt = ModelCheckpoint(dirpath=os.path.join(sidecar.checkpoint_root, "refused"), monitor="val_loss", save_top_k=2)
    stop = EarlyStopping(monitor="val_loss", patience=5)
    t = trainer([tg, ckpt, stop], max_epochs=2, enable_checkpointing=True, limit_val_batches=2)
    m = Net()
    d = data(10)
    t.fit(m, train_dataloaders=loader(d), val_dataloaders=loader(d[:2]))
    assert t.global_step == 20 and t.current_epoch == 2
    # the sidecar did refuse both passes (steps 10 and 20 < validation_warmup_steps=100) ...
    assert [(s, allowed) for s, allowed, _ in tg.validations] == [(10, False), (20, False)], tg.validations
    # ... and they ran anyway, audited: 2 epochs x 2 validation batches, val_loss reached the callbacks
    assert VAL_CALLS[id(m)] == 4
    assert all(audit is not None and not audit["parameters_changed"] for _, _, audit in tg.validations)
    assert "val_loss" in t.callback_metrics
    assert ckpt.best_model_path and os.path.isfile(ckpt.best_model_path)
    assert weights_finite(m)


def test_checkpoint_outside_sidecar_roots_fails_open_and_training_completes(sidecar, tmp_path):
    # Prevents: the sidecar's refusal (INVALID_ARGUMENT) to register a ModelCheckpoint file outside trainguard.checkpoint.roots ending the fail-open run with a raw gRPC error
    outside = str(tmp_path / "outside-roots")
    assert not outside.startswith(sidecar.checkpoint_root)
    tg = callback(sidecar, "sweep-outside-roots")
    ckpt = ModelCheckpoint(dirpath=outside, every_n_train_steps=2, save_top_k=-1)
    t = trainer([tg, ckpt], max_steps=10, enable_checkpointing=True)
    m = Net()
    t.fit(m, train_dataloaders=loader(data(10)))  # no exception
    assert t.global_step == 10
    assert len([f for f in os.listdir(outside) if f.endswith(".ckpt")]) == 5  # Lightning still saved them
    # none of them became a rollback target: the refused registrations were dropped
    assert not any(str(e.get("restore", "")).startswith(outside) for e in tg.guard.checkpoints.values()), \
        tg.guard.checkpoints
    assert weights_finite(m)


class GradProbe(pl.Callback):
    """The largest |gradient| each optimizer.step() sees (after Lightning's clipping), per step."""

    def __init__(self):
        self.seen = []

    def on_fit_start(self, trainer, pl_module):
        # a post hook: Lightning's optimizer.step(closure) runs training_step and backward inside the
        # step, so the gradients the update used are there once it returns
        def post(opt, args, kwargs):
            gs = [p.grad for grp in opt.param_groups for p in grp["params"] if p.grad is not None]
            self.seen.append((pl_module.calls - 1, max(float(g.abs().max()) for g in gs) if gs else None))
        trainer.optimizers[0].register_step_post_hook(post)


def test_clip_by_value_after_a_skipped_nan_step_does_not_crash(sidecar):
    # Prevents: Lightning's clip_grad_value_ raising on the empty gradient list a SKIP leaves ("Expected !nested_tensorlist[0].empty()")
    clip = 0.01
    tg = callback(sidecar, "sweep-clip-value")
    probe = GradProbe()
    t = trainer([tg, probe], max_steps=10, gradient_clip_val=clip, gradient_clip_algorithm="value")
    m = Net(nan_loss_at={5})
    t.fit(m, train_dataloaders=loader(data(10)))
    assert t.global_step == 10
    assert [(s, a) for s, a, _ in tg.verdicts] == [(5, "SKIP")], tg.verdicts
    assert tg.guard.counters["skips"] == 1
    assert weights_finite(m)
    # the skipped step reached optimizer.step() with no gradients; every other step was still clipped by
    # value, before and after the skip (the no-clip override lasts one step)
    steps = probe.seen
    assert [s for s, g in steps] == list(range(10)), probe.seen
    assert dict(steps)[5] is None, probe.seen
    assert all(g is not None and g <= clip + 1e-7 for s, g in steps if s != 5), probe.seen


def test_harmless_validation_records_no_validation_mutation_incident(sidecar):
    # Prevents: Lightning's own pl_module._current_fx_name bookkeeping reported as a validation that changed the model (false VALIDATION_MUTATION)
    run = "sweep-val-no-incident"
    tg = callback(sidecar, run, policy={"validation_warmup_steps": 5, "validation_interval_steps": 5})
    t = trainer([tg], max_steps=20, val_check_interval=5, limit_val_batches=1)
    m = Net()
    d = data(20)
    t.fit(m, train_dataloaders=loader(d), val_dataloaders=loader(d[:1]))
    allowed = [(s, audit) for s, ok, audit in tg.validations if ok]
    assert len(allowed) >= 3, tg.validations  # the sidecar allowed passes at 5, 10, 15, 20
    for s, audit in allowed:
        assert not (audit["parameters_changed"] or audit["dtype_device_mode_changed"] or audit["wiring_changed"]
                    or audit["rng_changed"]), (s, audit)
        assert audit["details"] == [] and not audit["restored"], (s, audit)
    assert tg.guard.counters["validation_incidents"] == 0
    kinds = [i["kind"] for i in sidecar.run_info(run)["incidents"]]
    assert "VALIDATION_MUTATION" not in kinds, sidecar.run_info(run)["incidents"]


class Rollbacks(pl.Callback):
    """The checkpoint step of every ROLLBACK the guard decided, and whether weights stay finite."""

    def __init__(self, tg):
        self.tg, self.targets, self.bad = tg, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
        if not weights_finite(pl_module):
            self.bad.append(trainer.global_step)
        v = self.tg.guard.last_verdict
        if v is not None and v.action.name == "ROLLBACK" and (v.step, v.rollback.checkpoint_step) not in self.targets:
            self.targets.append((v.step, v.rollback.checkpoint_step))


def test_in_memory_snapshots_are_taken_and_a_nan_burst_rolls_back_to_a_recent_one(sidecar):
    # Prevents: the snapshot ring never advancing under Lightning (after_update never called), so a NaN burst with no ModelCheckpoint rolled back to the untrained model (step -1)
    tg = callback(sidecar, "sweep-snapshots", policy={"known_good_healthy_steps": 3, "spike_warmup_steps": 8},
                  snapshots={"interval": 3, "max_overhead": 0.0, "pin_memory": False})
    rb = Rollbacks(tg)
    burst = set(range(18, 23))  # 5 NaN steps in a row: the 4th skip (limit 3) is a ROLLBACK
    t = trainer([tg, rb], max_steps=30)
    m = Net(nan_loss_at=burst)
    t.fit(m, train_dataloaders=loader(data(30)))
    rec = tg.guard.recovery
    assert rec.counters["snapshots"] > 1, rec.counters  # more than the initial state's (step -1)
    assert any(s.step > 0 for s in rec.store.slots) or rec.counters["snapshot_restores"] >= 1
    assert tg.guard.counters["rollbacks"] >= 1 and rb.targets, tg.verdicts
    step, target = rb.targets[0]
    assert 0 <= target < min(burst), rb.targets  # a snapshot taken during training, before the burst
    assert rec.counters["snapshot_restores"] >= 1, rec.counters
    assert not rb.bad and weights_finite(m)


def test_second_fit_with_the_same_callback_says_to_use_a_new_run_id(sidecar):
    # Prevents: a second trainer.fit with a used TrainguardCallback failing with "Cannot invoke RPC on closed channel!" instead of saying why
    tg = callback(sidecar, "sweep-fit-twice")
    m = Net()
    d = data(5)
    trainer([tg], max_steps=5).fit(m, train_dataloaders=loader(d))
    with pytest.raises(ValueError, match="new run id") as e:
        trainer([tg], max_steps=5).fit(m, train_dataloaders=loader(d))
    assert "closed channel" not in str(e.value)
    assert "sweep-fit-twice" in str(e.value)


class LossOnlySpike(Net):
    """Adds a constant at ``spike_at`` (a loss spike with the gradients of a healthy step); records the
    loss every training_step returns."""

    def __init__(self, spike_at):
        super().__init__()
        self.spike_at, self.returned = spike_at, []

    def training_step(self, b, i):
        loss = super().training_step(b, i)
        if self.calls - 1 == self.spike_at:
            loss = loss + 1e3
        self.returned.append(float(loss.detach()))
        return loss


class GuardLosses(pl.Callback):
    """The loss each guard.step() was given (after TrainguardCallback's on_fit_start made the Guard)."""

    def __init__(self, tg):
        self.tg, self.seen = tg, []

    def on_fit_start(self, trainer, pl_module):
        g = self.tg.guard
        step = g.step
        def recording(n, loss=None, *a, **k):
            self.seen.append(float(loss))
            return step(n, loss, *a, **k)
        g.step = recording


def test_gradient_accumulation_judges_the_cycles_mean_loss_so_a_spike_in_its_first_micro_batch_counts(sidecar):
    # Prevents: the guard seeing only the last micro-batch's loss, divided by accumulate_grad_batches,
    # so a loss spike in an earlier micro-batch of the cycle was applied unjudged
    n, steps, spike_step = 4, 16, 12
    tg = callback(sidecar, "sweep-accumulation", policy={"spike_warmup_steps": 8})
    probe = GuardLosses(tg)
    t = trainer([tg, probe], max_steps=steps, accumulate_grad_batches=n)
    m = LossOnlySpike(spike_at=spike_step * n)  # micro-batch 0 of step 12's cycle
    t.fit(m, train_dataloaders=loader(data(steps * n)))
    assert t.global_step == steps and len(probe.seen) == steps
    for k, seen in enumerate(probe.seen):  # every step: its own cycle's mean, nothing carried over
        assert seen == pytest.approx(sum(m.returned[k * n:(k + 1) * n]) / n, rel=1e-5), (k, probe.seen)
    actions = {s: a for s, a, _ in tg.verdicts}
    assert actions.get(spike_step) in ("SKIP", "CLIP"), tg.verdicts  # judged, not APPLYed at full size
    assert weights_finite(m)


class ManualClipByValue(Net):
    """Manual optimization: backward, clip by value, step (Lightning's documented manual loop)."""

    def __init__(self, nan_loss_at, clip):
        super().__init__(nan_loss_at)
        self.automatic_optimization = False
        self.clip = clip

    def training_step(self, b, i):
        opt = self.optimizers()
        loss = super().training_step(b, i)
        self.manual_backward(loss)
        self.clip_gradients(opt, gradient_clip_val=self.clip, gradient_clip_algorithm="value")
        opt.step()
        opt.zero_grad()


def test_manual_optimization_clipping_by_value_survives_a_skipped_step(sidecar):
    # Prevents: self.clip_gradients(..., "value") raising on the empty gradient list a SKIP leaves, as it
    # does when the loop calls guard.step() itself. The callback judges inside opt.step(), after the
    # loop's clip, so the clip never meets dropped gradients (the route docs/client.md gives manual loops)
    tg = callback(sidecar, "sweep-manual-clip-value")
    probe = GradProbe()
    t = trainer([tg, probe], max_steps=10)
    m = ManualClipByValue(nan_loss_at={5}, clip=0.01)
    t.fit(m, train_dataloaders=loader(data(10)))
    assert t.global_step == 10
    assert [(s, a) for s, a, _ in tg.verdicts] == [(5, "SKIP")], tg.verdicts
    assert dict(probe.seen)[5] is None  # the NaN step's update had no gradients
    assert all(g is not None and g <= 0.01 + 1e-7 for s, g in probe.seen if s != 5), probe.seen
    assert weights_finite(m)


def test_under_a_grad_scaler_the_guard_judges_the_unscaled_loss(sidecar):
    # Prevents: 16-mixed's GradScaler scaling the loss before on_before_backward, so the guard judged
    # loss x 65536, a value that halves at every overflow backoff
    from lightning.pytorch.plugins import MixedPrecision
    tg = callback(sidecar, "sweep-scaled-loss")
    probe = GuardLosses(tg)
    scaler = torch.amp.GradScaler("cpu")  # CUDA's default for 16-mixed; on the CPU given explicitly
    t = trainer([tg, probe], max_steps=6, accumulate_grad_batches=2,
                plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    m = LossOnlySpike(spike_at=-1)  # no spike: only records the losses
    t.fit(m, train_dataloaders=loader(data(12)))
    assert scaler.get_scale() > 1  # the loss was scaled for backward
    assert probe.seen == pytest.approx([(a + b) / 2 for a, b in zip(m.returned[::2], m.returned[1::2])], rel=1e-3)
    assert weights_finite(m)


DROPPED = range(10, 16)


class DropsNonFinite(Net):
    """Drops a batch whose loss is not finite, as Lightning users do: training_step returns None
    (automatic optimization) or returns before its backward and step (manual). It calls the
    submodule, outside the LightningModule's own forward."""

    def __init__(self, manual):
        super().__init__()
        self.automatic_optimization = not manual

    def training_step(self, b, i):
        x, y = b
        c, self.calls = self.calls, self.calls + 1
        if c in DROPPED:  # a NaN in the input: every watched module's output is NaN
            x = x.clone()
            x[0, 0] = float("nan")
        loss = F.mse_loss(self.net(x), y)
        if not torch.isfinite(loss):
            return None
        if not self.automatic_optimization:
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss


@pytest.mark.parametrize("manual", [False, True])
def test_batches_the_loop_drops_are_not_judged_nor_charged_to_the_next_step(sidecar, manual):
    # prevents: Lightning stepping the optimizer for a dropped batch (no backward, no gradients) and
    # the guard judging the dropped NaN forward: SKIPs, then a ROLLBACK to the untrained weights; and
    # a dropped forward of a submodule skipping the next healthy step
    tg = callback(sidecar, f"lightning-drops-{manual}", policy={"known_good_healthy_steps": 3})
    m = DropsNonFinite(manual)
    trainer([tg], max_steps=24).fit(m, train_dataloaders=loader(data(30)))
    assert tg.verdicts == [] and tg.guard.counters["skips"] == 0 and tg.guard.counters["rollbacks"] == 0
    assert weights_finite(m)


def test_callback_state_that_lightning_restores_after_fit_start_is_applied_before_the_first_step(sidecar):
    # Prevents: under FSDP, DeepSpeed and ModelParallel Lightning restores callbacks' state after
    # on_fit_start, where the guard is built: the state was kept for a start that had passed, so a
    # resumed run's LR cut (already in its optimizer and scheduler state) was cut again later.
    import time

    class LateRestore(pl.Callback):  # what those strategies do: load_state_dict once the fit has started
        def __init__(self, tg, state):
            self.tg, self.state, self.seen = tg, state, None

        def on_train_start(self, trainer, pl_module):
            state = self.tg.state_dict()  # a checkpoint's: saved after a rollback cut the LR by half
            state["recovery"]["lr"]["scale"], state["callback_step"] = 0.5, 7
            self.tg.load_state_dict(state)
            self.seen = (self.tg.guard.lr_scale, self.tg.step)

    tg = callback(sidecar, f"sweep-late-state-{time.time_ns()}")
    late = LateRestore(tg, None)
    trainer([tg, late], max_steps=2).fit(Net(), train_dataloaders=loader(data(4)))
    assert late.seen == (0.5, 7)
