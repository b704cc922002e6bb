"""Learning-rate cuts after a rollback, always measured from the uncut rate.

The sidecar's plan for rollback attempt k carries ``lr_factor = factor**k``: the rate that attempt
runs at *relative to the run's own schedule*. The state a rollback restores (a snapshot or a
checkpoint) remembers the cut that was in force when it was taken (``lr_scale``), so the rate is
set to ``restored x factor**k / restored_scale`` -- never a cut on top of a cut (20 -> 10 -> 5 for
factor 0.5, not 20 -> 10 -> 2.5). With a torch LR scheduler known to the guard the cut is written into
the optimizer's groups (``lr`` and the schedule keys ``initial_lr``/``max_lr``/``min_lr``) and into the
scheduler's ``base_lrs``/``max_lrs``, so the schedule goes on, scaled. Without one the LR is the loop's
own business -- nanoGPT's ``g["lr"] = get_lr(it)`` every iteration, timm's schedulers, a manual
``g["lr"] *= 0.99`` -- and a cut written into the groups would be overwritten at the next write (or,
by a multiplying writer, carried on): there the cut is applied at each update instead (``update_factor``:
the groups' LRs times the cut for the optimizer's step, put back after it), so it holds whatever
writes the LR, and the groups keep the loop's values.

After a rollback the first ``rewarm_steps`` steps ramp linearly up to the cut rate (ending at it).
``restore_after`` healthy steps after the rollback (0 = never, the default: a run that needed a
lower rate keeps it), the cut is lifted in ``restore_steps`` equal steps back to the full rate.
"""
from dataclasses import dataclass

import torch

from . import schedulers

# The rates a group carries (SWALR anneals towards its "swa_lr") and those a scheduler keeps itself
# (base_lrs, CyclicLR's max_lrs, a cosine's eta_min, ReduceLROnPlateau's floor): all cut alike, or a
# scheduler heads back to the uncut rate.
_GROUP_KEYS = ("lr", "initial_lr", "max_lr", "min_lr", "swa_lr")


@dataclass
class LrPolicy:
    restore_after: int = 0   # healthy steps after a rollback before the cut is lifted; 0 = keep it
    restore_steps: int = 1   # lift it in this many equal steps

    def __post_init__(self):
        if self.restore_after < 0 or self.restore_steps < 1:
            raise ValueError("lr restore_after must be >= 0 and restore_steps >= 1")


def _scale_value(v, f):
    if torch.is_tensor(v):
        return v.mul_(f) if v.is_floating_point() else v * f
    return v * f


class LrCuts:
    def __init__(self, optimizer, scheduler=None, policy=None):
        self.optimizer, self.scheduler = optimizer, scheduler
        self.policy = policy or LrPolicy()
        self.scale = 1.0          # the cut in force, relative to the uncut schedule
        self.rewarm = None        # (first_step, steps)
        self._healthy = 0         # healthy steps since the last rollback
        self._from = None         # the scale the restore ramp starts from

    @property
    def at_update(self):
        """Whether the cut is applied at each update rather than written into the groups: no torch
        scheduler is known, so something else (or nothing) sets the LR (a timm-style scheduler
        handed to ``guard.wrap`` rewrites the groups' ``lr`` from base values of its own)."""
        return not schedulers.torch_schedulers(self.scheduler)

    def attach(self, scheduler):
        """A torch scheduler became known: a cut applied at each update until now is written in."""
        cut_at_update = self.at_update and self.scale != 1.0
        self.scheduler = scheduler
        if cut_at_update and not self.at_update:
            self._rescale(self.scale)

    def _rescale(self, f):
        if f == 1.0 or self.at_update:
            return
        for g in self.optimizer.param_groups:
            for k in _GROUP_KEYS:
                if k in g and g[k] is not None:
                    g[k] = _scale_value(g[k], f)
        for s in schedulers.each(self.scheduler):  # a SequentialLR's own schedulers compute the rate
            for attr in ("base_lrs", "max_lrs", "min_lrs"):
                if isinstance(getattr(s, attr, None), list):
                    setattr(s, attr, [x * f for x in getattr(s, attr)])
            if isinstance(getattr(s, "eta_min", None), (int, float)) and s.eta_min:
                s.eta_min = s.eta_min * f
            if hasattr(s, "_last_lr") and isinstance(s._last_lr, list):
                s._last_lr = [x * f for x in s._last_lr]

    def resumed_at(self, scale):
        """A run resumed from a checkpoint saved under the cut ``scale``: the optimizer/scheduler state
        loaded with it already carries the cut, so it is recorded, not applied again (a later rollback
        then measures its cut from here: never a cut on a cut)."""
        self.scale = float(scale)
        self.rewarm, self._healthy, self._from = None, 0, None

    def on_rollback(self, restored_scale, lr_factor, resume_step, rewarm_steps):
        """The state was just restored (taken at ``restored_scale``); attempt k runs at ``lr_factor``."""
        target = lr_factor if lr_factor > 0 else 1.0
        self._rescale(target / (restored_scale or 1.0))  # at each update instead: the restored LRs are uncut
        self.scale = target
        self.rewarm = (int(resume_step), int(rewarm_steps)) if rewarm_steps > 0 else None
        self._healthy = 0
        self._from = None

    def on_unhealthy(self):
        self._healthy = 0
        self._from = None

    def on_healthy(self):
        """After an applied step: lifts the cut step by step once ``restore_after`` healthy steps passed."""
        p = self.policy
        if self.scale >= 1.0 or p.restore_after <= 0:
            return
        self._healthy += 1
        if self._healthy < p.restore_after:
            return
        if self._from is None:
            self._from = self.scale
        k = self._healthy - p.restore_after + 1
        nxt = 1.0 if k >= p.restore_steps else self._from + (1.0 - self._from) * k / p.restore_steps
        self._rescale(nxt / self.scale)
        self.scale = nxt
        if nxt >= 1.0:
            self._from = None

    def rewarm_factor(self, step):
        """The multiplier for the update of ``step`` (None outside a re-warm): (k+1)/n for the k-th
        step after the rollback, so the last re-warm step runs at the cut rate itself."""
        if self.rewarm is None or step is None:
            return None
        first, n = self.rewarm
        k = step - first
        if k >= n:
            self.rewarm = None
            return None
        if k < 0:
            return None
        return (k + 1) / n

    def update_factor(self, step):
        """What the LRs are multiplied by for the update of ``step`` (None: nothing): the re-warm
        ramp, and the cut where it is applied at each update (``at_update``)."""
        f = self.rewarm_factor(step)
        if self.at_update and self.scale != 1.0:
            f = self.scale if f is None else f * self.scale
        return f

    def effective(self, lr):
        """The rate an update runs at, for the step's report, given the groups' ``lr``."""
        return lr * self.scale if self.scale != 1.0 and self.at_update else lr

    def state_dict(self):
        return {"scale": self.scale, "rewarm": self.rewarm, "healthy": self._healthy, "from": self._from}

    def load_state_dict(self, st):
        self.scale = float(st.get("scale", 1.0))
        self.rewarm = tuple(st["rewarm"]) if st.get("rewarm") else None
        self._healthy = int(st.get("healthy", 0))
        self._from = st.get("from")
