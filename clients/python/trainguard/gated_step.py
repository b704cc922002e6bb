"""What a device-gated step leaves behind for the next step: its statistics on their way to the host,
whether the device skipped it, and what its replay needs (gated.GatedPath)."""
import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from . import rules
from .replay import StepFault
from .verdict import Verdict


@dataclass
class GatedStep:
    """What a device-gated step leaves behind for its replay at the next step."""
    step: int
    verdict: Verdict
    host: Any                  # [loss, grad_norm, group norms..., module stats...] (host copy, maybe in flight)
    event: Any                 # CUDA event after which the host copy is valid; None on the CPU
    n_groups: int
    names: List[str]
    threshold: float
    lrs: list                  # the param groups' LRs this step ran at
    generation: int
    replay_fn: Optional[Callable] = None
    rng: Any = None            # the RNG state the step began with
    position: Optional[int] = None  # the data position after this step's batch
    scaled: bool = False       # under an enabled GradScaler
    update_applied: bool = False  # its replay applied its update (TRANSIENT)
    multi: bool = False        # several ranks: whether it was skipped is what they agree (agreed_skip)
    agreed_skip: Optional[bool] = None  # several ranks: set by the next step, which reads their flags
    loss_absent: bool = False  # measured without a loss (its slot holds a 0.0 placeholder)

    def ready(self):
        return self.event is None or self.event.query()  # never blocks

    def known(self):
        """Whether the host knows if the device skipped it, without waiting."""
        return self.agreed_skip is not None if self.multi else self.ready()

    def finite(self):
        """Whether every value of the step was finite: the healthy step's check, which builds no
        StepFault."""
        vals = self.host.tolist()
        head = 2 + self.n_groups
        return all(map(math.isfinite, vals[:head])) and rules.outputs_finite(vals[head:])

    def fault(self):
        vals = self.host.tolist()
        mods = vals[2 + self.n_groups:]
        # the bare name, as Recovery._fault gives the replay's: the two are compared in classify()
        # (first_non_finite's "'name' (call k of n)" is for messages only)
        bad = rules.charged_output(self.names, vals[0], vals[1], mods)
        return StepFault(vals[0], vals[1], module=bad, loss_absent=self.loss_absent)
