"""The update that follows a verdict, whichever way the loop makes it.

``guard.optimizer_step()`` and ``guard.wrap(optimizer)`` make the update themselves
(``apply.run_update``), wrapped in the work the guard does around an update: the re-warm LR after a
rollback, update protection, and the recovery's bookkeeping (in-memory snapshots every N healthy
updates, the RNG state for a replay, lifting an LR cut). Two documented forms make it without them:

- a loop that drives the optimizer itself, ``if verdict.should_step: optimizer.step()``: the
  optimizer's step hooks (torch >= 2.0) run the same work around that ``step()``;
- a manual update loop (``Guard(model, None)``: ``if guard.step(i, loss).should_step: <update>``), or
  the same loop on torch < 2.0: the next ``guard.step()`` notes that the last verdict's update was
  made (or not), so the snapshots keep their cadence. No re-warm there (the loop sets its own LR:
  ``guard.lr_scale``), and a snapshot taken then also holds the next forward's BatchNorm statistics.

Before, both forms took one snapshot in a whole run: a late rollback went back to its first step.

The same hooks count the optimizer's updates. A loop that steps the optimizer more often than it
calls ``guard.step()`` (one that never calls it, or steps the inner optimizer where a framework holds
it instead of the wrapper) makes updates nobody judged: said once, in words, with what to change.
"""
import logging

from . import apply as apply_
from .errors import TrainguardError

log = logging.getLogger("trainguard")


class LoopUpdates:
    def __init__(self, guard):
        self.g = guard
        self._open = None   # (verdict, LRs to put back, protection snapshot) of an update under way
        self.updates = 0    # the optimizer's step() calls that ran (post-hook)
        self._said_unjudged = False
        opt = guard.optimizer
        self._handles = []
        if hasattr(opt, "register_step_pre_hook") and hasattr(opt, "register_step_post_hook"):
            self._handles = [opt.register_step_pre_hook(self._before), opt.register_step_post_hook(self._after)]

    def _before(self, optimizer, args, kwargs):
        g = self.g
        if not g._pending_update or g._closed or g.connection.paused:  # the guard's own update, or unguarded
            return None
        g._pending_update = False
        v = g.last_verdict
        if v is None or not v.should_step:  # stepped anyway: the verdict dropped its gradients
            apply_.skipped_update(g, v)
            return None
        self._open = (v, *apply_.begin_update(g, v))
        return None

    def _after(self, optimizer, args, kwargs):
        self._count_update()
        u, self._open = self._open, None
        if u is None:
            return
        v, saved, snap = u
        apply_.put_lr_back(self.g, saved)
        if snap is not None:
            self.g.protector.check(snap, v.step)  # raises NonFiniteUpdate out of optimizer.step()
        self.g.recovery.after_update(v.step)

    def _count_update(self):
        g = self.g
        self.updates += 1
        # one update ahead is let go (a warm-up update before the loop's first step(), say)
        if self._said_unjudged or g._closed or g.connection.paused or self.updates <= g.counters["steps"] + 1:
            return
        if not apply_.gradients(g.optimizer):  # a step with no gradient changed nothing (Lightning's dropped batch)
            self.updates -= 1
            return
        self._said_unjudged = True
        log.warning("trainguard: %s.step() ran %d times but guard.step() judged %d steps: the updates in between "
                    "were not guarded (a NaN among them reaches the weights). Call guard.step(step, loss) after "
                    "backward and before every optimizer step, or step the optimizer through "
                    "opt = guard.wrap(optimizer), which judges each update itself (docs/client.md)",
                    type(g.optimizer).__name__, self.updates, g.counters["steps"])

    def note_last(self):
        """At ``guard.step()``: the last verdict no optimizer step consumed was the loop's to act on
        (a manual update when it allowed one)."""
        g = self.g
        if not g._pending_update or g.last_verdict is None or g._closed:
            return
        g._pending_update = False
        v = g.last_verdict
        if v.should_step:
            g.recovery.after_update(v.step, late=True)
        else:
            g.recovery.after_no_update(v.step, late=True)

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def updates_in_backward(model):
    """The parameters an optimizer stepped inside backward (torchtune's ``optimizer_in_bwd``, PyTorch's
    "fuse the optimizer into backward" recipe): a post-accumulate-grad hook took their gradient before
    ``guard.step`` ran. Their updates are made before anything is judged: nothing the guard decides
    can keep them out, and the step is judged on gradients that are already gone."""
    return [n for n, p in model.named_parameters()
            if p.requires_grad and p.grad is None and getattr(p, "_post_accumulate_grad_hooks", None)]


def say_updates_in_backward(guard):
    """At the first judged step: said loudly, once; an error in fail-closed mode."""
    names = updates_in_backward(guard.model)
    if not names:
        return
    from .errors import TrainguardError
    msg = (f"trainguard: {len(names)} parameters ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) are "
           f"updated inside backward by a post-accumulate-grad hook (an optimizer in backward): those updates happen "
           f"before guard.step() and cannot be skipped, clipped or undone, and the guard judges gradients the hook "
           f"already cleared. A NaN step reaches the weights whatever the verdict says. Step the optimizer after "
           f"guard.step() instead (guard.wrap(optimizer)) to have them guarded")
    if guard.failure_mode == "closed":
        raise TrainguardError(msg)
    log.error("%s", msg)
    import warnings
    warnings.warn(msg, RuntimeWarning)


def refuse_join(guard):
    """DDP's ``with model.join():`` (uneven inputs) shadows the collectives of ranks that ran out of data
    with its own: the guard's per-step agreement then met DDP's join all_reduce on the other ranks (a hang
    until the process group's timeout on the host path, a gloo abort on the device gate). Said before the
    step's collective, on every rank still in the loop."""
    config = getattr(guard.model, "_join_config", None)
    if guard.world_size > 1 and config is not None and getattr(config, "enable", False):
        raise TrainguardError(
            "guard.step() inside DistributedDataParallel's join() context (uneven inputs): the guard agrees with "
            "every rank at each step, and a rank that ran out of data answers with DDP's join collectives "
            "instead, so the ranks would hang or abort. Give every rank the same number of batches "
            "(DistributedSampler(drop_last=True), or stop all ranks at the shortest rank's length) and leave "
            "out model.join()")


class StepChecks:
    """What the loop did around the Guard that it cannot guard, said once in words at ``step()``: an
    optimizer stepped inside backward (at the first step), and the model's parameters cast to another
    dtype after the Guard was built (``model.half()``, ``.to(torch.bfloat16)``): the pre-flight audit
    and the low-precision update protection were decided for the dtype the Guard saw, so a cast to
    fp16 without master weights goes unprotected. One parameter's dtype is read per step (a cast
    changes them all)."""

    def __init__(self, params):
        self.param = next((p for p in params if p.requires_grad), None)
        self.dtype = self.param.dtype if self.param is not None else None
        self.first = True
        self.cast_said = False

    def before_step(self, guard):
        if self.first:
            self.first = False
            say_updates_in_backward(guard)
        refuse_join(guard)
        if self.cast_said or self.param is None or self.param.dtype == self.dtype:
            return
        self.cast_said = True
        log.warning("trainguard: the model's parameters are %s now, %s when this Guard was built (a cast after it: "
                    "model.half(), .to(dtype)): the pre-flight audit of the precision setup and the protection of "
                    "low-precision updates were decided for %s and are not redone. Build the Guard after the cast "
                    "(a new run id), or pass protect_update=True", self.param.dtype, self.dtype, self.dtype)
