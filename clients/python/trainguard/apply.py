"""Applying a verdict to the training state: clip or drop the gradients, roll back, halt; and the
optimizer step that honours it (GradScaler, scheduler, re-warm, update protection)."""
import logging
import math

import torch

from . import rollback as rollback_
from .errors import TrainingHalted
from .verdict import Action

log = logging.getLogger("trainguard")


def gradients(optimizer):
    return [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


def clip_gradients(optimizer, threshold, grad_norm):
    """Scales the gradients to ``threshold`` (clip_grad_norm_'s coefficient, from the norm already
    measured: no second pass). Returns whether anything was scaled."""
    if not (threshold > 0 and grad_norm is not None and math.isfinite(grad_norm) and grad_norm > threshold):
        return False
    coef = threshold / (grad_norm + 1e-6)
    grads = gradients(optimizer)
    if hasattr(torch, "_foreach_mul_"):
        torch._foreach_mul_(grads, coef)
    else:
        for g in grads:
            g.mul_(coef)
    return True


def drop_gradients(optimizer, model=None):
    """Drops the step's gradients: the optimizer's, and any other of the model's (parameters another
    optimizer updates: one built after the Guard, when unfreezing; a loop stepping it would otherwise
    apply the vetoed step's NaN to them)."""
    optimizer.zero_grad(set_to_none=True)
    if model is None:
        return
    others = [n for n, p in model.named_parameters() if p.grad is not None]
    for _, p in model.named_parameters():
        p.grad = None
    return others


def apply_verdict(guard, v, grad_norm):
    """Acts on the gradients/training state for ``v``; raises TrainingHalted on HALT."""
    a = v.action
    if guard.running_stats and a != Action.ROLLBACK and not guard.connection.paused:  # a skipped forward's writes undone
        guard.running_stats.settle(guard.gate.buffers()[0] if v.device_gated else not v.should_step)
    if a == Action.APPLY:
        return
    if a == Action.CLIP:
        if clip_gradients(guard.optimizer, v.clip_threshold, grad_norm):
            guard.counters["clips"] += 1
        return
    if a == Action.SKIP:
        _drop_all_gradients(guard)
        guard.counters["skips"] += 1
        return
    if a == Action.ROLLBACK:
        _drop_all_gradients(guard)
        rollback_.rollback(guard, v)
        if guard.running_stats:
            guard.running_stats.keep_current()  # restored with the model
        return
    if a == Action.HALT:
        _drop_all_gradients(guard)
        raise TrainingHalted(v)
    # UNSPECIFIED (an old or confused sidecar): the safe reading is SKIP.
    _drop_all_gradients(guard)


def _drop_all_gradients(guard):
    others = drop_gradients(guard.optimizer, guard.model)
    if others and not guard.__dict__.get("_other_grads_said"):
        guard._other_grads_said = True
        log.warning("trainguard: %d parameters with gradients are not in the optimizer this Guard was built with "
                    "(%s%s): another optimizer updates them. Their gradients were dropped with the vetoed step's, so "
                    "no optimizer applies it, but their norms are not judged and that optimizer's state is not in "
                    "this Guard's snapshots. A model two optimizers train on purpose (a sparse embedding's): see "
                    "docs/client.md, 'One model trained by two optimizers'; an optimizer built after the Guard "
                    "(unfreezing): guard.close(), then Guard(model, new_optimizer, run=<a new run id>)", len(others),
                    ", ".join(others[:3]), ", ..." if len(others) > 3 else "")


def begin_update(guard, v, protect=False):
    """What runs just before an update under the verdict ``v``: the re-warm LR for this step and, with
    protect_update (or ``protect``), the weights' snapshot. Returns (the LRs to put back or None, the
    snapshot or None)."""
    saved_lr = rollback_.rewarm_lr(guard, v.step if v else None)
    snap = guard.protector.snapshot() if guard.protect_update or protect else None
    guard.recovery.before_update()  # on CUDA: the update waits (on the device) for a snapshot copy
    return saved_lr, snap


def put_lr_back(guard, saved_lr):
    """Undoes begin_update's re-warm LR once the update ran (None: nothing was changed)."""
    if saved_lr is not None:
        for g, lr in zip(guard.optimizer.param_groups, saved_lr):
            g["lr"] = lr


def run_update(guard, v, update, closure=False):
    """Runs ``update()`` (the optimizer's step) under the verdict ``v``: the re-warm LR for this step
    and, with protect_update, the check that the weights stayed finite. Returns update()'s result.

    ``closure``: an optimizer that evaluates its closure again inside the step (LBFGS' line search),
    where only the first evaluation was judged: the step is always protected, and an update that a
    later evaluation's NaN made non-finite is undone and counted as a skip instead of reaching the
    weights (without protect_update it does not raise: training goes on)."""
    saved_lr, snap = begin_update(guard, v, protect=closure)
    try:
        result = update()
    finally:
        put_lr_back(guard, saved_lr)
    check_update(guard, v.step if v else -1, snap, closure)
    return result


def check_update(guard, step, snap, closure=False):
    """After an update begun with ``begin_update``'s snapshot ``snap`` (None: nothing to check): with
    protect_update, a non-finite result is undone and raises NonFiniteUpdate; ``closure`` without
    protect_update (the snapshot only guards a closure's later, unjudged evaluations) undoes it, counts
    the step as a skip and says so, and training goes on (run_update; the Lightning callback).
    Returns the names of the parameters whose update was undone that way."""
    if snap is None:
        return []
    if not closure or guard.protect_update:
        guard.protector.check(snap, step)
        return []
    bad = guard.protector.undo_if_not_finite(snap)
    if bad:
        guard.counters["skips"] += 1
        guard.counters["updates_undone"] = guard.counters.get("updates_undone", 0) + 1
        log.warning("trainguard: step %d: %s's update left %s non-finite (an evaluation of the closure inside "
                    "the step went non-finite after the first, judged one): the update is undone, the step "
                    "skipped", step, type(guard.optimizer).__name__, ", ".join(bad[:5]))
    return bad


def skipped_update(guard, v):
    """The verdict ``v`` kept this step's update out (skip, rollback, halt)."""
    guard.recovery.after_no_update(v.step if v else None)


def on_a_metric(guard):
    """Whether the guard's scheduler steps on a metric (ReduceLROnPlateau): the loop steps it with
    its validation loss; the guard keeps it for snapshots and rollbacks only. Said once."""
    if not isinstance(guard.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return False
    if not getattr(guard, "_said_metric_scheduler", False):
        guard._said_metric_scheduler = True
        log.info("trainguard: Guard(scheduler=ReduceLROnPlateau): it steps on a metric, so guard.optimizer_step() "
                 "does not step it: call scheduler.step(val_loss) yourself (the guard still restores it on rollback)")
    return True


def optimizer_step(guard):
    """Steps the optimizer (through the GradScaler if any) and the scheduler when the last verdict
    allows it; otherwise only lets the GradScaler close its iteration. Returns whether it stepped."""
    v = guard._verdict_for_update(auto=False)
    opt, scaler = guard.optimizer, guard.scaler
    scaler_on = guard.scaler_on
    if v is not None and not v.should_step:
        if scaler_on and guard._unscaled:
            scaler.update()
        guard._unscaled = False
        skipped_update(guard, v)
        if v.scaler_overflow:  # the scaler's own skip: the schedule advances on it, as without a guard
            step_scheduler(guard)
        return False

    def update():
        if scaler_on:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    try:
        run_update(guard, v, update)
    finally:
        guard._unscaled = False
    step_scheduler(guard)
    guard.recovery.after_update(v.step if v else None)
    return True


def step_scheduler(guard):
    """The guard's scheduler's step after an update, unless it steps on a metric or is owed a skip
    the device gate made (late_skips)."""
    if guard.steps_scheduler and not on_a_metric(guard) and not guard.gated.late.pay():
        guard.scheduler.step()
