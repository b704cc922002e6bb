"""Replaying a faulty step to tell a transient fault from a deterministic one.

When a step comes out non-finite (or, with ``mode="both"``, beyond the spike bounds), the guard
re-runs forward and backward once on the same batch, from the same weights (the update has not
been applied: on the host path the guard decides before ``optimizer.step()``; on the device gate
the fused optimizer skipped the step, and it is replayed at the next ``guard.step``, see gated.py)
and the same RNG state (captured when the step began). Then:

* the replay is clean -> TRANSIENT (a bit flip, a flaky device): the replay's gradients are used,
  the step is applied, nothing is lost; the sidecar counts transients per device;
* the same fault again -> DETERMINISTIC (a bad batch, a fragile layer, too high an LR): the step is
  skipped as before and its data position is recorded so a rollback skips those samples;
* a different fault -> UNSTABLE (numerics that change from run to run): skipped as before.

Data-loader contract: the loop passes ``replay=`` to ``guard.step``: a callable that runs forward
and backward on the *same* batch again and returns the loss (``lambda: fwd_bwd(batch)``), the way
``optimizer.step(closure)`` takes a closure. The guard zeroes the gradients and restores the RNG
state before calling it. A loop that cannot re-yield the batch passes nothing: the step is not
replayed and is handled as it always was (SKIP; no class). See docs/client.md, "Recovery".
"""
import collections
import enum
import math
from dataclasses import dataclass

_MODES = ("off", "nonfinite", "both")


class FaultClass(enum.IntEnum):
    # Values equal trainguard.v1.FaultClass; the order is the severity used to agree across ranks.
    UNSPECIFIED = 0
    TRANSIENT = 1
    DETERMINISTIC = 2
    UNSTABLE = 3


@dataclass
class ReplayPolicy:
    """``mode``: "off", "nonfinite" (non-finite steps only) or "both" (also spikes beyond the local
    bounds). At most ``max_replays`` replays within any ``window_steps`` steps (a faulty device or a
    run of bad batches must not double the cost of many steps)."""
    mode: str = "nonfinite"
    max_replays: int = 4
    window_steps: int = 1000
    spike_rtol: float = 1e-2  # a replayed spike within this of the original counts as the same

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"replay mode must be one of {_MODES}, got {self.mode!r}")
        if self.max_replays < 0 or self.window_steps < 1:
            raise ValueError("replay max_replays must be >= 0 and window_steps >= 1")


@dataclass
class StepFault:
    """What one pass of a step looked like, as far as classification needs."""
    loss: float
    grad_norm: float
    module: str = ""      # first watched module with a non-finite output
    spike: bool = False   # finite but beyond the local bounds
    loss_absent: bool = False  # judged without a loss: ``loss`` is a 0.0 placeholder

    @property
    def nonfinite(self):
        return not (math.isfinite(self.loss) and math.isfinite(self.grad_norm)) or bool(self.module)

    @property
    def faulty(self):
        return self.nonfinite or self.spike

    def signature(self):
        if self.nonfinite:
            return ("nonfinite", math.isfinite(self.loss), math.isfinite(self.grad_norm), self.module)
        return ("spike",) if self.spike else ("clean",)

    def describe(self):
        if self.nonfinite:
            if self.module and math.isfinite(self.loss) and math.isfinite(self.grad_norm):
                return (f"non-finite: a NaN in module '{self.module}''s output (loss {self.loss:.6g} and "
                        f"grad norm {self.grad_norm:.6g} finite)")
            where = f" first in module '{self.module}'" if self.module else ""
            return f"non-finite (loss={'absent' if self.loss_absent else self.loss}, grad norm={self.grad_norm}){where}"
        if self.spike:
            return f"spike (loss={self.loss:.6g}, grad norm={self.grad_norm:.6g})"
        return f"clean (loss={self.loss:.6g}, grad norm={self.grad_norm:.6g})"


def classify(original, replay, rtol=1e-2):
    """The class of a fault from the original pass and its replay."""
    if not replay.faulty:
        return FaultClass.TRANSIENT
    if original.signature() != replay.signature():
        return FaultClass.UNSTABLE
    if original.nonfinite:
        return FaultClass.DETERMINISTIC
    close = (math.isclose(original.loss, replay.loss, rel_tol=rtol)
             and math.isclose(original.grad_norm, replay.grad_norm, rel_tol=rtol))
    return FaultClass.DETERMINISTIC if close else FaultClass.UNSTABLE


class ReplayBudget:
    """At most ``max_replays`` replays within any window of ``window_steps`` steps."""

    def __init__(self, policy):
        self.policy = policy
        self._steps = collections.deque()
        self.used = 0
        self.refused = 0

    def wants(self, fault):
        p = self.policy
        if p.mode == "off" or not fault.faulty:
            return False
        return fault.nonfinite or p.mode == "both"

    def allow(self, step):
        while self._steps and self._steps[0] <= step - self.policy.window_steps:
            self._steps.popleft()
        if len(self._steps) >= self.policy.max_replays:
            self.refused += 1
            return False
        return True

    def spend(self, step):
        self._steps.append(step)
        self.used += 1

    def state_dict(self):
        return {"steps": list(self._steps), "used": self.used, "refused": self.refused}

    def load_state_dict(self, st):
        self._steps = collections.deque(st.get("steps", []))
        self.used, self.refused = st.get("used", 0), st.get("refused", 0)
