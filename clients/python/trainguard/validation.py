"""The validation gate: ``with guard.validation(model) as v: if v.allowed: ...``.

BeginValidation asks the sidecar whether validation may run now (a healthy run, past the warm-up,
on the interval); the loop runs its validation only ``if v.allowed:``. A context manager cannot skip
its own body without a trace hook (``sys.settrace``, which breaks debuggers and coverage), so the
body always runs and the loop decides. A deferral is said once per reason, in words, with the step
it is deferred until. A body that runs although validation was refused (the pre-0.2 form without
``if v.allowed:``) gets a loud one-time warning, and the model is still audited and restored.

The audit itself (snapshot, diff, restore) is audit.py."""
import logging
import re

import grpc

from ._proto.trainguard.v1 import trainguard_pb2 as pb
from .audit import ModelSnapshot

log = logging.getLogger("trainguard")

__all__ = ["ValidationContext", "ValidationSession", "ModelSnapshot"]


class ValidationSession:
    """What ``with guard.validation(model) as v:`` yields: ``v.allowed`` (also ``bool(v)``),
    ``v.reason``, ``v.deferred_until`` (the step a warm-up deferral lasts until, else None), and
    after the block ``v.audit`` (a dict), ``v.restored`` and ``v.incident_ids``. Set ``v.loss``."""

    def __init__(self, allowed, reason):
        self._allowed, self.reason = allowed, reason
        self.checked = False  # the loop read v.allowed: it decides whether the body validates
        m = re.search(r"until step (\d+)", reason or "")
        self.deferred_until = int(m.group(1)) if m and not allowed else None
        self.loss = 0.0
        self.audit = None
        self.incident_ids = []
        self.restored = False

    @property
    def allowed(self):
        self.checked = True
        return self._allowed

    def __bool__(self):
        return self.allowed


# An audit's kinds of change, in the order ModelSnapshot.diff() returns them (ValidationAudit's fields)
AUDIT_KINDS = ("parameters_changed", "dtype_device_mode_changed", "wiring_changed", "rng_changed")


def audit_of(diff, restored):
    """The audit dict of a ``ModelSnapshot.diff()``: its AUDIT_KINDS, ``details`` and ``restored``."""
    *kinds, details = diff
    return dict(zip(AUDIT_KINDS, kinds), details=details, restored=restored)


def _reason_kind(reason):
    return re.sub(r"\d+", "N", reason or "")


class ValidationContext:
    """``with guard.validation(model) as v:`` — BeginValidation, the audit (snapshot, diff,
    restore) and EndValidation. When validation is refused the body still runs (no trace hook can
    skip it cleanly): the loop checks ``if v.allowed:``."""

    def __init__(self, guard, model, step, restore, runs_anyway=False):
        self.g, self.model, self.step, self.restore = guard, model, step, restore
        # a framework's evaluation the loop cannot be told not to run (the HF Trainer's): a refusal is
        # said, and the pass is audited and restored in full like an allowed one
        self.runs_anyway = runs_anyway

    def __enter__(self):
        g = self.g
        self.step = self.step if self.step is not None else (g.last_verdict.step if g.last_verdict else 0)
        g.flush(g.deadline)  # the sidecar judges validation on up-to-date state
        allowed, reason = True, ""
        try:
            r = g.transport.call("BeginValidation", pb.BeginValidationRequest(run_id=g.run, rank=g.rank, step=self.step))
            allowed, reason = r.allowed, r.reason
        except grpc.RpcError as e:
            g.connection.unreachable("BeginValidation", e)  # raises when closed; open: validate, audit still runs
            reason = "sidecar unreachable; validating with the audit on"
        # Several ranks: no collective here. The sidecar tells every rank asking at one step what it told
        # the first, so ranks agree; and a loop that validates on rank 0 only has no other rank to wait for.
        self.session = ValidationSession(allowed, reason)
        if not allowed and self.runs_anyway:
            log.log(logging.DEBUG if g.__dict__.get("_validation_runs_anyway_said") else logging.WARNING,
                    "trainguard: validation at step %d refused (%s); the framework runs it anyway, audited and "
                    "restored", self.step, reason or "no reason given")
            g.__dict__["_validation_runs_anyway_said"] = True
        elif not allowed:
            self._say_deferred(reason)
        if g.watch:
            g.watch.enabled = False
        ours = set()
        if g.watch:
            for h in g.watch._handles:
                ours.add(h.id)
        # A refused validation keeps no tensor values (the loop normally skips the body): it only
        # notes versions, wiring and attributes, enough to see and name what an unchecked body did.
        self.snap = ModelSnapshot(self.model, keep_values=self.restore if allowed or self.runs_anyway else None,
                                  ignore_hooks=ours)
        return self.session

    def _say_deferred(self, reason):
        said = self.g.__dict__.setdefault("_validation_deferrals_said", set())
        kind = _reason_kind(reason)
        if kind in said:
            log.debug("trainguard: validation at step %d deferred: %s", self.step, reason)
            return
        said.add(kind)
        log.warning("trainguard: validation at step %d deferred: %s. Run it only `if v.allowed:` inside "
                    "`with guard.validation(...) as v:` (this is said once; later deferrals for the same reason "
                    "are logged at DEBUG)", self.step, reason or "refused by the sidecar")

    def __exit__(self, exc_type, exc, tb):
        g = self.g
        if g.watch:
            g.watch.enabled = True
        s = self.session
        if not s._allowed and not self.runs_anyway:
            return self._exit_refused(exc_type)
        p, d, w, r, details = self.snap.diff()
        changed = p or d or w or r
        if changed and self.restore:
            self.snap.restore()
            self.session.restored = True
        self.session.audit = audit_of((p, d, w, r, details), self.session.restored)
        audit = pb.ValidationAudit(parameters_changed=p, dtype_device_mode_changed=d, wiring_changed=w,
                                   rng_changed=r, details=details[:64], restored=self.session.restored)
        try:
            resp = g.transport.call("EndValidation", pb.EndValidationRequest(
                run_id=g.run, rank=g.rank, step=self.step, validation_loss=float(self.session.loss or 0.0), audit=audit))
            self.session.incident_ids = list(resp.incident_ids)
        except grpc.RpcError as e:
            if exc_type is None:
                g.connection.unreachable("EndValidation", e)
        if changed:
            g.counters["validation_incidents"] += 1
            log.warning("trainguard: validation changed the model (%s)%s", "; ".join(details[:8]),
                        ", undone" if self.session.restored else "")
        return False

    def _exit_refused(self, exc_type):
        """The body ran although validation was refused. Fine when it checked v.allowed; otherwise
        it is the old form, which used to be skipped by a trace hook: say so loudly, once."""
        s = self.session
        p, d, w, r, details = self.snap.diff()
        if p or d or w or r:
            self.snap.restore()  # all but tensor values (none were kept): wiring, attributes, mode, RNG
            s.restored = True
            s.audit = audit_of((p, d, w, r, details), True)
            log.warning("trainguard: a refused validation at step %d changed the model (%s); undone%s", self.step,
                        "; ".join(details[:8]), " except parameter values" if p else "")
        else:
            s.audit = audit_of((False, False, False, False, []), False)
        if not s.checked and exc_type is None and not self.g.__dict__.get("_validation_unchecked_said"):
            self.g.__dict__["_validation_unchecked_said"] = True
            log.error("trainguard: the body of `with guard.validation(...) as v:` ran at step %d although validation "
                      "was refused (%s). trainguard no longer skips the body with a trace hook (it broke debuggers "
                      "and coverage): write `with guard.validation(model) as v:` then `if v.allowed: <validate>`. "
                      "Said once.", self.step, s.reason)
        return False


class AuditedOutsideRun:
    """``with AuditedOutsideRun(model, "trainer.validate()"):`` -- a pass with no run to report to (a
    framework's evaluation before or after training): the model is snapshotted, and what the pass
    changed is undone (``restore``) and said, as inside a run. A validation that writes into the
    weights before training starts would otherwise leave the run to start from damaged weights."""

    def __init__(self, model, what, restore=True, ignore_attrs=()):
        self.model, self.what, self.restore, self.ignore_attrs = model, what, restore, ignore_attrs
        self.audit = None

    def __enter__(self):
        self.snap = ModelSnapshot(self.model, keep_values=self.restore, ignore_attrs=self.ignore_attrs)
        return self

    def __exit__(self, exc_type, exc, tb):
        p, d, w, r, details = self.snap.diff()
        changed = p or d or w or r
        if changed and self.restore:
            self.snap.restore()
        self.audit = audit_of((p, d, w, r, details), bool(changed and self.restore))
        if changed:
            log.warning("trainguard: %s changed the model (%s)%s", self.what, "; ".join(details[:8]),
                        ", undone" if self.restore else "")
        return False
