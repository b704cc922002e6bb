"""Guarding loops that call ``optimizer.step()`` themselves (torchft's OptimizerWrapper pattern).

    opt = guard.wrap(optimizer)            # the one added line (before building the scheduler)
    for step, batch in enumerate(loader):
        loss = model(batch); loss.backward()
        guard.step(step, loss)             # measure, decide, apply (clip / drop grads / roll back)
        opt.step()                         # or scaler.step(opt); scaler.update()
        scheduler.step(); opt.zero_grad()

``GuardedOptimizer.step()`` runs the inner optimizer only when the verdict of the step allows it;
re-warm after a rollback and update protection apply as in ``guard.optimizer_step()``. When the
loop (or a framework) calls ``opt.step()`` without a ``guard.step()`` since the previous update, the
wrapper measures and judges the step itself with the loss marked absent, so the update is never
unguarded. ``guard.wrap(scheduler)`` returns a scheduler whose ``step()`` is skipped with the update.
"""
import logging
import weakref

import torch

from . import apply as apply_

log = logging.getLogger("trainguard")

#: id(optimizer) -> the newest Guard built on it: a wrapper of a Guard closed since follows that one
_NEWEST = weakref.WeakValueDictionary()


def note_guard(guard):
    """Called by every new Guard: wrappers handed out by an earlier, closed Guard over the same
    optimizer follow this one from their next call (``_Follows``)."""
    _NEWEST[id(guard.optimizer)] = guard


class _Follows:
    """The Guard a wrapper obeys: the one that made it, until that one is closed and a newer Guard
    over the same optimizer exists. A notebook, or a loop that closes its Guard and builds another
    (a new run id after a restart, another phase), keeps the wrapped optimizer and scheduler it
    built once: left on the closed Guard, they stepped through every skip of the new one (the
    schedule advanced, no re-warm, no update protection)."""

    @property
    def guard(self):
        g = self.__dict__["_guard"]
        if g._closed:
            newer = _NEWEST.get(id(g.optimizer))
            if newer is not None and newer is not g and not newer._closed and newer.optimizer is g.optimizer:
                self._follow(newer)
                log.warning("trainguard: a %s wrapped by the closed Guard of run %s now follows the Guard of run %s, "
                            "built since on the same optimizer", type(self).__name__, g.run, newer.run)
                g = newer
        return g

    def _follow(self, guard):
        self.__dict__["_guard"] = guard


class GuardedOptimizer(_Follows, torch.optim.Optimizer):
    """An ``Optimizer`` (for LR schedulers, GradScaler, Accelerate, Lightning, HF Trainer) whose
    ``step()`` consults the guard. Everything else is the inner optimizer's: ``param_groups`` and
    ``state`` are the same objects, ``state_dict()`` is the inner one's."""

    @property
    def _step_supports_amp_scaling(self):
        """GradScaler.step hands a device-gated wrapper ``found_inf``/``grad_scale`` (no host read)
        and the wrapper passes them to the fused inner optimizer. Only once this iteration's
        ``guard.step`` has run (it unscales and gates): a loop that leaves the step to the wrapper
        gets GradScaler's plain path (unscale, a host read of found_inf, then step(), which judges
        the step), since GradScaler would otherwise fix its flags before the guard unscaled."""
        g = self.guard
        return bool(g.device_gate and g._pending_update and getattr(self.optimizer, "_step_supports_amp_scaling", False))

    def __init__(self, guard, optimizer):  # no super().__init__: all state is the inner optimizer's
        self.__dict__["_guard"] = guard
        self.__dict__["optimizer"] = optimizer

    def _follow(self, guard):
        super()._follow(guard)
        if guard._wrapped is None:
            guard._wrapped = self

    # --- the delegated Optimizer surface -------------------------------------------------------
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optimizer.param_groups = value

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, value):
        self.optimizer.state = value

    @property
    def defaults(self):
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value):
        self.optimizer.defaults = value

    def __getattr__(self, name):  # only for names not found on the wrapper
        return getattr(self.__dict__["optimizer"], name)

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self):
        return f"GuardedOptimizer({self.optimizer!r})"

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group):
        self.optimizer.add_param_group(param_group)

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._mark_grads()

    # --- the guarded step -----------------------------------------------------------------------
    def step(self, closure=None, **kwargs):
        """Steps the inner optimizer when this step's verdict allows it; returns its result (a skipped
        step: the closure's loss when it ran, as torch's ``step(closure)`` returns it, else None)."""
        g = self.guard
        first = None
        if closure is not None and not g._pending_update and not self._loop_ran_backward():
            # A closure computes this step's gradients: judging now (before it ran) would judge the
            # previous step's gradients, or none. Evaluate it once, judge that, and hand the inner
            # optimizer the result for its first evaluation (LBFGS evaluates it again later).
            # Where the loop ran this step's backward itself (SAM's closure form: the closure is
            # the gradient at perturbed weights, evaluated after the optimizer moved them), the
            # step's gradients are judged as they are, and every closure call is the optimizer's.
            with torch.enable_grad():
                first = closure()
            g.step(g.numbering.loop_step(g.next_step()), first)
            closure = _first_call_returns(first, closure)
        v = g._verdict_for_update()
        if v is not None and not v.should_step:
            apply_.skipped_update(g, v)
            return first  # a loop reads it (loss = opt.step(closure); loss.item())
        handed = self._hand_on_scaler_flags()
        try:
            result = apply_.run_update(g, v, lambda: self.optimizer.step(closure, **kwargs) if closure is not None
                                       else self.optimizer.step(**kwargs), closure=closure is not None)
        finally:
            if handed:  # GradScaler's flags were for this update only (the gate installs its own each step)
                self.optimizer.__dict__.pop("found_inf", None)
                self.optimizer.__dict__.pop("grad_scale", None)
        g.recovery.after_update(v.step if v else None)
        self._mark_grads()
        return result

    def _mark_grads(self):
        # only for a loop that steps with a closure: a walk over every parameter is no cost for the others
        if "_grads_mark" in self.__dict__:
            self.__dict__["_grads_mark"] = _grads_mark(self.optimizer)

    def _loop_ran_backward(self):
        """Whether some gradient is new since the last update or ``zero_grad`` through this wrapper:
        a backward the loop ran, not an LBFGS closure's last evaluation inside the update. Every
        parameter is looked at (the first may get no gradient: a ViT's unused cls token), and a
        gradient only zeroed in place (``model.zero_grad(set_to_none=False)``) is no backward."""
        mark = self.__dict__.setdefault("_grads_mark", {})  # marked from now on
        changed = [g for g in _grads(self.optimizer)
                   if id(g) not in mark or mark[id(g)][0]() is not g or mark[id(g)][1] != g._version]
        return any(bool(g.detach().ne(0).any()) for g in changed)  # a host read per changed one: closure steps only

    def _hand_on_scaler_flags(self):
        """GradScaler.step set ``found_inf`` (its record, the gate's skip ORed in) and ``grad_scale``
        on the wrapper: the inner fused optimizer is the one that reads them. Returns whether it did."""
        mine = self.__dict__
        if "found_inf" not in mine:
            return False
        self.optimizer.found_inf = mine["found_inf"]
        if mine.get("grad_scale") is not None:
            self.optimizer.grad_scale = mine["grad_scale"]
        else:
            self.optimizer.__dict__.pop("grad_scale", None)
        return True


def _grads(optimizer):
    return [p.grad for grp in optimizer.param_groups for p in grp["params"] if p.grad is not None]


def _grads_mark(optimizer):
    """{id(grad): (a weak reference to it, its version)}: a reference, not only an id, since a freed
    gradient's id is soon another's."""
    return {id(g): (weakref.ref(g), g._version) for g in _grads(optimizer)}


def _first_call_returns(value, closure):
    """A closure whose first call returns ``value`` (already computed, its gradients in place) and
    whose later calls evaluate ``closure``."""
    pending = [True]

    def call():
        if pending[0]:
            pending[0] = False
            return value
        return closure()
    return call


class GuardedScheduler(_Follows):
    """An LR scheduler whose ``step()`` is skipped when the guard skipped the update (as the
    optimizer's own step was; not on a GradScaler's own overflow skip, on which a schedule steps
    without a guard too), or once for each skip the device gate made that the host learned of
    since (the schedule had advanced on it: late_skips); everything else is the inner scheduler's.
    Only a scheduler stepped once per step is held back: one stepped per epoch (several steps since
    its last ``step()``) or on a metric always steps, whatever the epoch's last step was. Further
    calls for a step held back are held back too: Accelerate's scheduler steps it once per process
    for each update (``split_batches=False``)."""

    def __init__(self, guard, scheduler):
        self.__dict__["_guard"] = guard
        self.__dict__["scheduler"] = scheduler
        self.__dict__["_steps_seen"] = guard.counters["steps"]  # the guard's steps at the last step()
        self.__dict__["_held_at"] = None  # the guard's steps when a step() was last held back

    def _follow(self, guard):
        super()._follow(guard)
        # counted from here in the new Guard's steps, the last step() one step back; restored on its rollbacks
        self.__dict__["_steps_seen"] = guard.counters["steps"] - 1
        self.__dict__["_held_at"] = None
        if guard.scheduler is None:
            guard.recovery.attach_scheduler(self.scheduler)

    @property
    def __class__(self):
        # isinstance(it, LRScheduler) holds, as for the scheduler itself: Accelerate's prepare()
        # recognises schedulers by class, and left a plain proxy unwrapped (stepped on every
        # micro-batch, not saved by save_state)
        return type(self.__dict__["scheduler"])

    def __getattr__(self, name):
        return getattr(self.__dict__["scheduler"], name)

    def __setattr__(self, name, value):
        setattr(self.scheduler, name, value)

    def step(self, *args, **kwargs):
        g = self.guard
        steps = g.counters["steps"]
        seen, self.__dict__["_steps_seen"] = self._steps_seen, steps
        if steps == self._held_at:  # another call for the step held back (one per process)
            return None
        if steps - seen == 1 and self._held_back(g):  # stepped once per step: it follows the updates
            self.__dict__["_held_at"] = steps
            return None
        return self.scheduler.step(*args, **kwargs)

    @staticmethod
    def _held_back(g):
        v = g.last_verdict
        if v is not None and not v.should_step and not v.scaler_overflow:  # an overflow: as without a guard
            return True
        return g.gated.late.pay()  # owed to a skip the device made, learned since (late_skips)

    def state_dict(self):
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict):
        self.scheduler.load_state_dict(state_dict)


class ParametersOnly:
    """Stands in for the optimizer of a manual update loop (``Guard(model, None, run)``): every
    parameter in one group (a frozen one has no gradient and counts for nothing until the loop
    unfreezes it: then its gradients are judged and dropped with the rest), no state, and a
    ``step()`` that does nothing — the loop updates the weights itself when ``guard.step(...).should_step``."""

    def __init__(self, model):
        self.param_groups = [{"params": list(model.parameters()), "lr": 0.0}]
        self.state = {}
        self.defaults = {}

    def zero_grad(self, set_to_none=True):
        for p in self.param_groups[0]["params"]:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self, closure=None):
        return None

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass


def wrap(guard, obj):
    """``guard.wrap(optimizer)`` / ``guard.wrap(scheduler)``: see Guard.wrap."""
    if isinstance(obj, GuardedOptimizer) and obj.guard is guard:
        return obj
    if isinstance(obj, torch.optim.Optimizer):
        if obj is not guard.optimizer:
            raise ValueError("guard.wrap(optimizer): wrap the optimizer this Guard was built with "
                             f"({type(guard.optimizer).__name__}), not another one. A new optimizer (after "
                             "unfreezing, say) needs a Guard of its own: guard.close(), then "
                             "Guard(model, new_optimizer, run=<a new run id>) and wrap that")
        if guard._wrapped is None:
            guard._wrapped = GuardedOptimizer(guard, obj)
        return guard._wrapped
    if hasattr(obj, "step") and hasattr(obj, "state_dict") and hasattr(obj, "optimizer"):
        if guard.scheduler is None:  # restored on rollback, its rates cut; stepped by the loop through the wrapper
            guard.recovery.attach_scheduler(obj)
        return GuardedScheduler(guard, obj)
    raise TypeError(f"guard.wrap() takes the Guard's optimizer or an LR scheduler, not {type(obj).__name__}")
