"""Regression tests for the third Lightning sweep, against the real sidecar jar: an optimizer that evaluates
Lightning's closure several times per step (LBFGS; lightning_closure.py) and the LR schedule around a skipped
step (lightning_schedules.py). Tiny LightningModules on the CPU, each run compared with the unguarded one."""
import logging
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from models import weights_finite  # noqa: E402
from test_lightning_sweep import Net, callback, data, loader, trainer  # noqa: E402
from test_lightning_sweep2 import RollbackTargets  # noqa: E402

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class Weights(pl.Callback):
    """The weights after every batch, and the LR schedule's state before it."""

    def __init__(self):
        self.after, self.lrs, self.epochs = [], [], []

    def on_train_batch_start(self, trainer, pl_module, b, i):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
        configs = trainer.lr_scheduler_configs
        self.epochs.append(configs[0].scheduler.last_epoch if configs else None)

    def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
        self.after.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def equal_states(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- closure optimizers

class TwiceSGD(torch.optim.Optimizer):
    """Evaluates the closure twice per step (as SAM does) and descends along the second evaluation's
    gradients; defined here, not in torch.optim, so nothing is known of it beforehand."""

    evaluations = 2

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            for _ in range(self.evaluations_now()):
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss

    def evaluations_now(self):
        return self.evaluations


class SometimesTwiceSGD(TwiceSGD):
    """Evaluates the closure twice only on every 4th step (a backtracking optimizer re-evaluates only on
    the steps it rejects), once otherwise."""

    def evaluations_now(self):
        self.steps = getattr(self, "steps", 0) + 1
        return 2 if self.steps % 4 == 0 else 1


class ClosureNet(Net):
    """``nan_loss_at`` counts closure evaluations (training_step calls), several per optimizer step."""

    def __init__(self, optimizer, nan_loss_at=()):
        super().__init__(nan_loss_at)
        self.optimizer = optimizer

    def configure_optimizers(self):
        if self.optimizer == "lbfgs":
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=4)  # 4 evaluations per step
        if self.optimizer == "sometimes":
            return SometimesTwiceSGD(self.parameters(), lr=0.05)
        return TwiceSGD(self.parameters(), lr=0.05)


def fit_closure(sidecar, run, optimizer, nan_loss_at=(), steps=8):
    tg = callback(sidecar, run) if sidecar is not None else None
    weights = Weights()
    m = ClosureNet(optimizer, nan_loss_at)
    t = trainer([c for c in (tg, weights) if c is not None], max_steps=steps)
    t.fit(m, train_dataloaders=loader(data(steps)))
    return tg, weights, m, t


def test_lbfgs_is_judged_once_per_optimizer_step_and_a_healthy_run_stays_bit_identical(sidecar):
    # prevents: Lightning calling on_before_optimizer_step after every closure evaluation, so the guard judged
    # each of LBFGS' evaluations as a step (32 guard steps for 8 optimizer steps, the sidecar's steps too)
    _, _, ref, _ = fit_closure(None, None, "lbfgs")
    run = "sweep3-lbfgs-healthy"
    tg, _, m, t = fit_closure(sidecar, run, "lbfgs")
    assert m.calls == ref.calls == 32  # four evaluations per step, as without a guard
    assert t.global_step == 8 and tg.step == 8 and tg.guard.counters["steps"] == 8, tg.guard.counters
    assert tg.verdicts == []
    assert sidecar.run_info(run)["run"]["lastStep"] == 7
    assert same_weights(ref, m)


def test_a_nan_at_a_later_lbfgs_evaluation_undoes_that_update_and_training_goes_on(sidecar):
    # prevents: a NaN at LBFGS' second evaluation of a step judged as a step of its own and SKIPped by dropping
    # the gradients in the middle of the line search (the weights had already moved): the loss jumped from
    # 0.08 to 1645 and the run rolled back to the untrained weights
    run = "sweep3-lbfgs-nan"
    tg, w, m, t = fit_closure(sidecar, run, "lbfgs", nan_loss_at={9})  # step 2's second evaluation
    assert [(s, a) for s, a, _ in tg.verdicts] == [(2, "SKIP")], tg.verdicts
    assert "update undone" in tg.verdicts[0][2][0]
    assert tg.guard.counters["updates_undone"] == 1 and tg.guard.counters["rollbacks"] == 0
    assert equal_states(w.after[1], w.after[2])  # step 2's update undone: weights and LBFGS state
    assert not equal_states(w.after[2], w.after[3])  # and step 3 trains on from there
    assert tg.step == t.global_step == 8
    assert weights_finite(m)
    x, y = data(1)[0]
    assert F.mse_loss(m(x), y).item() < 0.2  # trained, not blown up (the bug: 1645)


def test_a_skipped_step_of_a_closure_optimizer_keeps_its_later_evaluations_out_too(sidecar):
    # prevents: the guard judging only Lightning's first closure evaluation and SKIPping it, while an optimizer
    # that evaluates the closure again (SAM-like, not torch's) updated the weights along the second
    # evaluation's gradients: a skipped step that moved the weights
    _, ref_w, _, _ = fit_closure(None, None, "twice")
    tg, w, m, t = fit_closure(sidecar, "sweep3-twice-skip", "twice", nan_loss_at={6})  # step 3's first evaluation
    assert [(s, a) for s, a, _ in tg.verdicts] == [(3, "SKIP")], tg.verdicts
    assert equal_states(w.after[2], w.after[3])  # no update at step 3
    assert all(equal_states(a, b) for a, b in zip(ref_w.after[:3], w.after[:3]))  # healthy steps as unguarded
    assert tg.guard.counters["steps"] == t.global_step == 8
    assert weights_finite(m)


def test_a_nan_at_the_second_evaluation_of_an_unknown_optimizers_first_step_is_undone(sidecar):
    # prevents: the update of a closure optimizer nothing is known of (its first step: whether it evaluates
    # the closure again is not known yet) going unprotected, its second evaluation's NaN reaching the weights
    tg, w, m, t = fit_closure(sidecar, "sweep3-twice-first", "twice", nan_loss_at={1})
    assert [(s, a) for s, a, _ in tg.verdicts] == [(0, "SKIP")], tg.verdicts
    assert tg.guard.counters["updates_undone"] == 1 and tg.guard.counters["steps"] == 8
    initial = ClosureNet("twice").state_dict()
    assert equal_states(initial, w.after[0])  # step 0's update undone
    assert weights_finite(m) and not equal_states(w.after[0], w.after[7])  # and training went on


def test_an_optimizer_that_evaluates_twice_only_on_some_steps_stays_protected_after_single_steps(sidecar):
    # prevents: the copy for a closure's later evaluations given up after one step that evaluated the closure
    # once: a backtracking optimizer evaluating again only on every 4th step had that step's NaN written into
    # the weights, then three skips and a rollback to the start
    tg, w, m, t = fit_closure(sidecar, "sweep3-sometimes", "sometimes", nan_loss_at={4})  # step 3's second
    assert [(s, a) for s, a, _ in tg.verdicts] == [(3, "SKIP")], tg.verdicts
    assert tg.guard.counters["updates_undone"] == 1 and tg.guard.counters["rollbacks"] == 0
    assert equal_states(w.after[2], w.after[3])  # step 3's update undone
    assert weights_finite(m) and tg.step == t.global_step == 8


# ----------------------------------------------------------------------------- the LR schedule

class ScheduledNet(Net):
    """AdamW under ``LambdaLR(0.9 ** k)``, stepped by Lightning every ``frequency`` batches."""

    def __init__(self, nan_loss_at=(), frequency=1):
        super().__init__(nan_loss_at)
        self.frequency = frequency

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.9 ** k)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step",
                                                   "frequency": self.frequency}}


def expected_lrs(steps, frequency, left_out=None):
    """The LR each batch trains at: Lightning steps the schedule after batch b when (b + 1) % frequency == 0,
    except after ``left_out``."""
    stepped, lrs = 0, []
    for b in range(steps):
        lrs.append(1e-2 * 0.9 ** stepped)
        stepped += (b + 1) % frequency == 0 and b != left_out
    return lrs


@pytest.mark.parametrize("frequency,nan_at,left_out", [(1, (6,), 6), (2, (6, 11), 11)])
def test_a_skipped_step_does_not_advance_the_step_interval_lr_schedule(sidecar, frequency, nan_at, left_out):
    # prevents: Lightning stepping its interval="step" LR scheduler after a step the guard skipped, where the
    # plain client's guard.wrap(scheduler) holds it back: the schedule counted an update that never happened.
    # With frequency=2 batch 6 has no scheduler step of its own (nothing to leave out), batch 11 has one.
    steps = 16
    ref, ref_w = ScheduledNet(frequency=frequency), Weights()
    trainer([ref_w], max_steps=steps).fit(ref, train_dataloaders=loader(data(steps)))
    assert ref_w.lrs == pytest.approx(expected_lrs(steps, frequency), rel=1e-12)
    healthy, healthy_w = ScheduledNet(frequency=frequency), Weights()
    trainer([callback(sidecar, f"sweep3-sched-healthy-{frequency}"), healthy_w],
            max_steps=steps).fit(healthy, train_dataloaders=loader(data(steps)))
    assert healthy_w.lrs == ref_w.lrs and same_weights(ref, healthy)  # bit-identical
    tg, w = callback(sidecar, f"sweep3-sched-nan-{frequency}"), Weights()
    m = ScheduledNet(set(nan_at), frequency)
    trainer([tg, w], max_steps=steps).fit(m, train_dataloaders=loader(data(steps)))
    assert [(s, a) for s, a, _ in tg.verdicts] == [(s, "SKIP") for s in nan_at], tg.verdicts
    # the unguarded sequence with the skipped step's scheduler step removed
    assert w.lrs == pytest.approx(expected_lrs(steps, frequency, left_out), rel=1e-12), (w.lrs, ref_w.lrs)
    assert weights_finite(m)


class FusedScheduledNet(ScheduledNet):
    """Fused AdamW: its step honours the device gate's skip flag (on the CPU too)."""

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.9 ** k)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.torch2
def test_a_skip_the_device_gate_made_holds_the_lr_schedule_back_once_when_learned(sidecar):
    # prevents: a NaN step skipped inside the fused optimizer (judged APPLY on the host, learned a step or more
    # later) leaving Lightning's schedule one step ahead of the updates, where guard.wrap(scheduler) pays it back
    steps, nan_at = 16, 5
    tg, w = callback(sidecar, "sweep3-sched-device-gate", device_gate=True, replay=False), Weights()
    m = FusedScheduledNet({nan_at})
    trainer([tg, w], max_steps=steps).fit(m, train_dataloaders=loader(data(steps)))
    assert tg.guard.counters["device_gated_steps"] > 0
    assert [(s, a) for s, a, _ in tg.verdicts] == [(nan_at, "SKIP")], tg.verdicts  # the late skip, listed
    learned = [b for b in range(nan_at, steps - 1) if w.lrs == pytest.approx(expected_lrs(steps, 1, b), rel=1e-12)]
    assert learned and learned[0] <= nan_at + 2, w.lrs  # one scheduler step left out, a step or two late
    assert weights_finite(m)


@pytest.mark.parametrize("target", ["checkpoint", "snapshot"])
def test_a_rollback_still_restores_the_lr_schedule_and_its_batch_does_not_advance_it(sidecar, target):
    # prevents: the rolled-back batch stepping the LR scheduler right after the rollback restored it, so the
    # run went on one scheduler step ahead of the state it rolled back to
    run = f"sweep3-sched-rollback-{target}"
    tg = callback(sidecar, run, snapshots=target == "snapshot",
                  policy={"spike_warmup_steps": 8, "known_good_healthy_steps": 2})
    w = Weights()
    on_disk = target == "checkpoint"
    rollbacks = RollbackTargets(tg, sidecar, run, wait_at=12 if on_disk else None, wait_for="step=10.ckpt")
    cbs = [tg, w, rollbacks]
    if on_disk:
        cbs.append(ModelCheckpoint(dirpath=os.path.join(sidecar.checkpoint_root, run), every_n_train_steps=5,
                                   save_top_k=-1, filename="{step}"))
    m = ScheduledNet(nan_loss_at=range(12, 16))
    trainer(cbs, max_steps=20, enable_checkpointing=on_disk).fit(m, train_dataloaders=loader(data(20)))
    # the checkpoint Lightning wrote after batch 9, or the run's initial in-memory snapshot
    assert rollbacks.targets == [(15, 9 if on_disk else -1)], (rollbacks.targets, tg.verdicts)
    at, restored_to = rollbacks.targets[0]
    if on_disk:
        saved = torch.load(os.path.join(sidecar.checkpoint_root, run, "step=10.ckpt"), weights_only=False)
        assert saved["lr_schedulers"][0]["last_epoch"] == restored_to + 1
    # the batch after the rollback trains at the restored schedule (one scheduler step per step up to the
    # target), its rate cut by the rollback
    assert w.epochs[at + 1] == restored_to + 1, (w.epochs, at)
    assert w.lrs[at + 1] == pytest.approx(tg.guard.lr_scale * 1e-2 * 0.9 ** (restored_to + 1), rel=1e-9)
    assert weights_finite(m)
