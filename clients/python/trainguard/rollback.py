"""Rollback and re-warm: restoring the last good checkpoint and easing the learning rate back in.

``rollback(guard, verdict)`` restores the checkpoint the sidecar's RollbackPlan names, scales the
learning rate by the plan's factor (scheduler base LRs included), arms the re-warm window and voids
verdicts still in flight for pre-rollback steps. ``rewarm_lr`` ramps the LR linearly over the window
for one optimizer.step().
"""
import logging

from .errors import TrainingHalted
from .verdict import Action, RollbackPlan, Verdict

log = logging.getLogger("trainguard")


def scale_lr(optimizer, scheduler, factor):
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * factor
        if "initial_lr" in g:
            g["initial_lr"] = g["initial_lr"] * factor
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]


def rollback(guard, v):
    """Applies a ROLLBACK verdict on ``guard`` (a Guard); sets ``v.resume_step``."""
    plan = v.rollback or RollbackPlan()
    key = (plan.checkpoint_id, plan.checkpoint_step, plan.attempt, v.step)
    target = plan.files[0] if plan.files else guard.checkpoints.get(plan.checkpoint_step, {}).get("dir")
    if target is None:
        raise TrainingHalted(Verdict(v.step, Action.HALT, reasons=v.reasons + [
            f"ROLLBACK to step {plan.checkpoint_step} ordered but its files are unknown to this rank"]))
    restore = getattr(guard, "restore_hook", None)  # a framework's own loader (Lightning, HF), if set
    if restore is not None:
        restore(target, plan)
    else:
        guard.load_checkpoint(target)
    factor = plan.lr_factor if plan.lr_factor > 0 else 1.0
    scale_lr(guard.optimizer, guard.scheduler, factor)
    if plan.rewarm_steps > 0:
        guard.rewarm = (plan.checkpoint_step + 1, int(plan.rewarm_steps))
    guard._void_in_flight()  # verdicts still in flight for pre-rollback steps are void
    if guard.watch:
        guard.watch.reset()
    guard._applied_rollbacks.add(key)
    guard.counters["rollbacks"] += 1
    v.resume_step = plan.checkpoint_step + 1
    log.warning("trainguard: rolled back to step %d (%s), data position %d, lr x%.3g",
                plan.checkpoint_step, target, plan.resume_position, factor)


def rewarm_lr(guard, step):
    """Lowers the LR for this step inside the re-warm window; returns the LRs to put back (or None)."""
    if guard.rewarm is None or step is None:
        return None
    first, n = guard.rewarm
    k = step - first
    if k < 0 or k >= n:
        if k >= n:
            guard.rewarm = None
        return None
    saved = [g["lr"] for g in guard.optimizer.param_groups]
    for g in guard.optimizer.param_groups:
        g["lr"] = g["lr"] * (k + 1) / n
    return saved
