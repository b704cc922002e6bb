"""Exceptions the client raises. Each message says what happened and what to do next."""


class TrainguardError(RuntimeError):
    """Base class of every error the client raises."""


class RunRefused(TrainguardError):
    """The sidecar's pre-flight audit refused the run (FAILED_PRECONDITION).

    ``findings`` lists ``(code, severity, message)`` tuples when the sidecar sent them."""

    def __init__(self, message, findings=()):
        super().__init__(message)
        self.findings = list(findings)


class TrainingHalted(TrainguardError):
    """The sidecar ordered HALT. ``verdict`` is the verdict that did it; its reasons say why."""

    def __init__(self, verdict):
        rs = list(verdict.reasons)
        # a reason already contained in another one (the sidecar's HALT restates its cause) is said once
        said = [r for i, r in enumerate(rs) if r not in rs[:i] and not any(r != o and r in o for o in rs)]
        reasons = "; ".join(said) or "no reason given"
        where = f" (first non-finite module: {verdict.first_nonfinite_module})" if verdict.first_nonfinite_module else ""
        how = "" if "trainguard resume" in reasons else (
            " The run stays HALTED: once the cause is dealt with, an operator resumes it (`trainguard resume <run>`, "
            "or POST /api/runs/<run>/resume) and the trainer is restarted on the same run id")
        super().__init__(f"trainguard halted the run at step {verdict.step}: {reasons}{where}.{how}")
        self.verdict = verdict


class SidecarUnavailable(TrainguardError):
    """The sidecar did not answer within the deadline and failure_mode is "closed"."""


class NonFiniteUpdate(TrainguardError):
    """optimizer.step() turned finite weights non-finite; the update was undone (protect_update)."""

    def __init__(self, step, module, detail):
        super().__init__(
            f"optimizer.step() at step {step} made the weights of '{module}' non-finite from finite "
            f"gradients; trainguard undid the update and stopped. {detail}")
        self.step, self.module = step, module
