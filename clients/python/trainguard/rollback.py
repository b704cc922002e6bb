"""Rollback and re-warm: restoring the newest known-good state and easing the learning rate back in.

``rollback(guard, verdict)`` restores what the sidecar's RollbackPlan names -- an in-memory snapshot
(``memory://...``, see ``snapshot``) or a checkpoint directory -- sets the learning rate to the
plan's cut measured from the uncut rate (``lrcut``: never a cut on a cut), arms the re-warm window
and voids verdicts still in flight for pre-rollback steps. ``rewarm_lr`` ramps the LR linearly over
the window for one optimizer.step().
"""
import logging
import pickle
import re

from . import distributed as dist_agree
from . import integrity
from .errors import TrainguardError, TrainingHalted
from .tensors import all_finite
from .verdict import Action, RollbackPlan, Verdict

log = logging.getLogger("trainguard")


def _halt(v, why):
    raise TrainingHalted(Verdict(v.step, Action.HALT, reasons=v.reasons + [why]))


def rollback(guard, v):
    """Applies a ROLLBACK verdict on ``guard`` (a Guard); sets ``v.resume_step``. A target that cannot
    be restored (its files gone or changed since they were registered, a loader's error, non-finite
    weights) is reported to the sidecar, which orders the next older known-good one or halts the run."""
    plan = v.rollback or RollbackPlan()
    rec = guard.recovery
    while True:
        if plan.checkpoint_step >= v.step:  # an older sidecar's plan: going "back" to a later state resumes nothing
            _halt(v, f"ROLLBACK to the checkpoint of step {plan.checkpoint_step} ordered at step {v.step}: it is not "
                     f"behind this step (a checkpoint an earlier process of this run saved after the point this one "
                     f"restarted from?); restart with a new run id, or from that checkpoint")
        if rec.position() is not None:
            # the policy's extra skip beyond the steps back to the checkpoint, counted from the trigger's position
            extra = max(0, plan.skip_batches - max(0, v.step - plan.checkpoint_step))
            plan.resume_at = rec.position() + extra
        target, restored_scale, failure = _restore(guard, plan)
        if failure is None:
            break
        plan = _next_plan(guard, v, plan, failure)
    key = (plan.checkpoint_id, plan.checkpoint_step, plan.attempt, v.step)
    _forget_abandoned_checkpoints(guard, plan.checkpoint_step)
    rec.lr.on_rollback(restored_scale, plan.lr_factor, plan.checkpoint_step + 1, plan.rewarm_steps)
    plan.bad_positions = sorted(rec.bad_positions)
    guard._void_in_flight()  # verdicts still in flight for pre-rollback steps are void
    if guard.watch:
        guard.watch.reset()
    guard._applied_rollbacks.add(key)
    guard.counters["rollbacks"] += 1
    # in the loop's numbering, which the guard's differs from after a renumbering (a loop numbering per
    # epoch, one that kept counting after an earlier rollback): a loop jumping back to it lands on the
    # checkpoint's own next step
    v.resume_step = guard.numbering.loop_step(plan.checkpoint_step + 1)
    # the next step() maps the loop's number onto it; applied in step last_step (v.step or one later)
    guard.numbering.rolled_back(max(v.step, guard.last_step if guard.last_step is not None else v.step),
                                plan.checkpoint_step + 1)
    log.warning("trainguard: rolled back to step %d (%s), data position %d, lr x%.3g of the uncut rate%s",
                plan.checkpoint_step, target, plan.resume_position, rec.lr.scale,
                f", known-bad data positions {plan.bad_positions}" if plan.bad_positions else "")


def _forget_abandoned_checkpoints(guard, restored_step):
    """Drops the entries of steps after ``restored_step``: they hold the timeline the rollback abandons,
    whose step numbers the re-numbered steps take again. Left in place, a stale entry makes a framework
    skip registering a new save of that step, or shadows it as the file a later rollback loads."""
    for step in [s for s in guard.checkpoints if s > restored_step]:
        del guard.checkpoints[step]


def _restore(guard, plan):
    """Restores ``plan``'s state: (what was restored, the LR cut it was taken at, None), or (.., ..,
    why it could not, in words) with nothing trained on from it."""
    rec = guard.recovery
    said = f"ROLLBACK to the checkpoint of step {plan.checkpoint_step} ordered but"
    if rec.holds(plan):
        try:
            return plan.files[0], rec.restore(plan), None
        except LookupError as e:
            return None, None, f"ROLLBACK to the in-memory snapshot of step {plan.checkpoint_step} ordered but {e}"
    entry = guard.checkpoints.get(plan.checkpoint_step, {})
    target = plan.files[0] if plan.files else entry.get("dir")
    changed = integrity.changed_since_registered(entry, plan)
    side, failure = (None, f"{said} {changed}") if changed else _load(guard, plan, target)
    # every rank restores the same target or none does: none is left waiting in a collective for another
    if not _agreed(guard, failure is None):
        return None, None, failure or f"{said} another rank could not restore it"
    # The cut the checkpoint was saved at: its side file's, else the one recorded when it was registered
    # (a framework's loader returns none), else the uncut rate (registered by an earlier process).
    registered = entry.get("lr_scale", 1.0)
    # a framework's loader may have fallen back to an older checkpoint (its file rotated away)
    target = guard.checkpoints.get(plan.checkpoint_step, {}).get("restore") or target
    return target, float(side.get("lr_scale", registered) if isinstance(side, dict) else registered), None


def _next_plan(guard, v, plan, failure):
    """Tells the sidecar that ``plan``'s checkpoint could not be restored (RestoreFailed): it leaves the
    rollback targets, and the sidecar orders the same attempt from the next older known-good one
    (returned) or halts the run (raised, with its words), so the record says what happened."""
    log.error("trainguard: %s", failure)
    if not plan.checkpoint_id:
        _halt(v, failure + "; restart from another checkpoint")
    import grpc
    from ._proto.trainguard.v1 import trainguard_pb2 as pb
    try:
        answer = guard.transport.call("RestoreFailed", pb.RestoreFailedRequest(
            run_id=guard.run, rank=guard.rank, step=v.step, checkpoint_id=plan.checkpoint_id, reason=failure),
            deadline=max(guard.deadline, 10.0))
    except grpc.RpcError as e:
        _halt(v, f"{failure}; the sidecar could not be told ({e.code().name}: {e.details()}): restart from "
                 f"another checkpoint")
    told = Verdict.from_proto(answer.verdict)
    if told.action == Action.ROLLBACK and told.rollback is not None and told.rollback.checkpoint_id != plan.checkpoint_id:
        log.warning("trainguard: rolling back to the checkpoint of step %d (%s) instead", told.rollback.checkpoint_step,
                    told.rollback.checkpoint_id)
        v.rollback = told.rollback
        return told.rollback
    raise TrainingHalted(Verdict(v.step, Action.HALT, reasons=v.reasons + [failure] + told.reasons,
                                 run_state=told.run_state, incident_ids=told.incident_ids))


def _load(guard, plan, target):
    """Loads the checkpoint at ``target`` with the framework's loader (``restore_hook``) or the guard's
    own: (what the loader returned, None), or (None, why it could not, in words)."""
    said = f"ROLLBACK to the checkpoint of step {plan.checkpoint_step} ordered but"
    if target is None:
        return None, f"ROLLBACK to step {plan.checkpoint_step} ordered but its files are unknown to this rank"
    restore = getattr(guard, "restore_hook", None)  # a framework's own loader (Lightning, HF), if set
    guard._restoring = True  # Guard.load_state_dict is a no-op meanwhile (client_state)
    try:
        side = restore(target, plan) if restore is not None else guard.load_checkpoint(target)
    except FileNotFoundError as e:  # deleted since it was registered (a framework's rotation)
        return None, f"{said} its files are gone, deleted since they were registered: {e}"
    except TrainguardError as e:  # not guard.save_checkpoint's layout, and no restore_hook to load it
        return None, f"{said} {e}"
    except pickle.UnpicklingError as e:  # a class the weights-only reader does not take
        return None, (f"{said} loading it failed ({type(e).__name__}: {_plain(e)}); restore it with your own "
                      f"loader: guard.restore_hook = lambda path, plan: restore(plan.files, load=<your loader>, ...)")
    except Exception as e:  # a loader (restore_hook) failing on a damaged file: a reason, not a crash
        return None, f"{said} loading it failed ({type(e).__name__}: {_plain(e)}): damaged since it was registered?"
    finally:
        guard._restoring = False
    # whatever the loader read (each rank's shard): never train on NaN
    local = [p.detach().to_local() if hasattr(p, "to_local") else p.detach() for p in guard.model.parameters()]
    ok = all_finite(local)
    if not (ok is None or bool(ok)):
        return None, f"{said} restored non-finite weights (the file changed since the sidecar verified it?)"
    return side, None


def _plain(err):
    """An error's text without terminal escapes (torch's UnpicklingError bolds its advice), for the journal."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(err))


def _agreed(guard, ok):
    """``ok`` on every rank (one all_reduce with several ranks, which all restore in the same step)."""
    return dist_agree.all_true(ok) if dist_agree.is_initialized() and guard.world_size > 1 else ok


def rewarm_lr(guard, step):
    """Lowers the LR for this step's update: inside the re-warm window, and by the cut where it is
    applied at each update (lrcut); returns the LRs to put back (or None)."""
    f = guard.recovery.lr.update_factor(step)
    if f is None:
        return None
    saved = [g["lr"] for g in guard.optimizer.param_groups]
    for g in guard.optimizer.param_groups:
        g["lr"] = g["lr"] * f
    return saved
