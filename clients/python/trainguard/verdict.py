"""The verdict a step gets, as plain Python (no protobuf types leak into user code)."""
import enum
import math
from dataclasses import dataclass, field
from typing import List, Optional


class Action(enum.IntEnum):
    # Values equal trainguard.v1.Action; the order is the severity used to agree across ranks.
    UNSPECIFIED = 0
    APPLY = 1
    CLIP = 2
    SKIP = 3
    ROLLBACK = 4
    HALT = 5


@dataclass
class LocalBounds:
    """Thresholds within which the client may decide a step on its own (0 = no bound)."""
    max_grad_norm: float = 0.0
    max_loss: float = 0.0
    clip_threshold: float = 0.0
    valid_until_step: int = 0

    @classmethod
    def from_proto(cls, b):
        return cls(b.max_grad_norm, b.max_loss, b.clip_threshold, b.valid_until_step)

    def usable(self, step: int) -> bool:
        # Bounds with no limit at all are not an authorisation to decide locally.
        if self.max_grad_norm <= 0 and self.max_loss <= 0:
            return False
        return self.valid_until_step <= 0 or step <= self.valid_until_step

    def learned(self) -> bool:
        """Whether a limit comes from the run's own values: inf is the sidecar's "no baseline yet"."""
        return 0 < self.max_grad_norm < math.inf or 0 < self.max_loss < math.inf


@dataclass
class RollbackPlan:
    checkpoint_id: str = ""
    checkpoint_step: int = 0
    files: List[str] = field(default_factory=list)
    data_position: int = 0
    skip_batches: int = 0
    lr_factor: float = 1.0
    rewarm_steps: int = 0
    attempt: int = 0
    #: Set by the client: data positions whose batches failed DETERMINISTICALLY on replay; a loop
    #: that re-reads data after the rollback skips them (``guard.is_bad_batch(position)``).
    bad_positions: List[int] = field(default_factory=list)
    #: Set by the client: where the loop stood after the batch that triggered the rollback, plus the
    #: policy's extra skip, when the loop passes data positions (``guard.step(..., data_position=)``)
    resume_at: Optional[int] = None

    @property
    def resume_position(self) -> int:
        """Where the data loader should continue: past the batches that led into the trouble. The
        sidecar's skip counts steps from the checkpoint's position; a loop whose positions count
        something else (micro-batches under gradient accumulation, samples) is placed past the
        trigger's own position instead (``resume_at``), whichever is further."""
        planned = self.data_position + self.skip_batches
        return planned if self.resume_at is None else max(planned, self.resume_at)

    @classmethod
    def from_proto(cls, p):
        return cls(p.checkpoint_id, p.checkpoint_step, list(p.files), p.data_position, p.skip_batches,
                   p.lr_factor or 1.0, p.rewarm_steps, p.attempt)


@dataclass
class Verdict:
    step: int
    action: Action
    clip_threshold: float = 0.0
    validation_allowed: bool = False
    reasons: List[str] = field(default_factory=list)
    first_nonfinite_module: str = ""
    run_state: str = ""
    rollback: Optional[RollbackPlan] = None
    bounds: Optional[LocalBounds] = None
    incident_ids: List[int] = field(default_factory=list)
    decided_locally: bool = False
    #: True when the sidecar could not be reached and the client decided by itself (fail-open).
    degraded: bool = False
    #: Set by the client after a rollback: the step the loop should continue from.
    resume_step: Optional[int] = None
    #: The step went through the device gate (no host sync): APPLY is provisional; on the device a
    #: non-finite step is skipped by the optimizer and a step above ``clip_threshold`` is clipped.
    device_gated: bool = False
    #: Set when the step was replayed: "TRANSIENT" (the replay's clean update was applied),
    #: "DETERMINISTIC" or "UNSTABLE" (see trainguard.replay).
    fault_class: Optional[str] = None
    #: A SKIP that is an enabled GradScaler's own overflow skip (decided locally, no incident): the
    #: scaler skips the update and lowers its scale, and the LR schedule advances as without a guard.
    scaler_overflow: bool = False

    @property
    def should_step(self) -> bool:
        """Whether the optimizer (and scheduler) may step for this verdict."""
        return self.action in (Action.APPLY, Action.CLIP)

    @classmethod
    def from_proto(cls, v, decided_locally=False):
        from ._proto.trainguard.v1 import trainguard_pb2 as pb
        return cls(
            step=v.step,
            action=Action(v.action) if v.action in Action._value2member_map_ else Action.UNSPECIFIED,
            clip_threshold=v.clip_threshold,
            validation_allowed=v.validation_allowed,
            reasons=list(v.reasons),
            first_nonfinite_module=v.first_nonfinite_module,
            run_state=pb.RunState.Name(v.run_state) if v.run_state in pb.RunState.values() else str(v.run_state),
            rollback=RollbackPlan.from_proto(v.rollback) if v.HasField("rollback") else None,
            bounds=LocalBounds.from_proto(v.bounds) if v.HasField("bounds") else None,
            incident_ids=list(v.incident_ids),
            decided_locally=decided_locally,
        )
