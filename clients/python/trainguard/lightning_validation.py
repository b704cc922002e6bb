"""The Lightning callback's validation passes (a mixin of ``lightning.TrainguardCallback``): each pass
of ``fit`` asks the sidecar (``BeginValidation``), is audited (parameters, buffers, modes, wiring, RNG)
and, by default, what it changed is undone in ``on_validation_end`` and reported (``EndValidation``);
Lightning's sanity check is audited and undone too, no validation of the run (the sidecar is not
asked, a change is recorded at step 0); ``validate()`` / ``test()`` / ``predict()`` outside ``fit`` are
audited and undone locally (``AuditedOutsideRun``)."""
import logging

from .validation import AUDIT_KINDS, AuditedOutsideRun, ModelSnapshot, audit_of
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")

# What Lightning itself writes into a LightningModule's __dict__ around a validation pass (the hook
# being called; the names of its torchmetrics modules, cached by the first self.log of a metric object):
# not the model's state, and not the validation's doing.
LIGHTNING_BOOKKEEPING = frozenset({"_current_fx_name", "_metric_attributes"})


class ValidationAudits:
    """Needs ``guard``, ``step``, ``restore``, ``gate_validation``, ``validations``, ``sanity_check``,
    ``_val``, ``_outside``, ``_closed`` and ``_refusal_said`` on the callback."""

    def on_validation_start(self, trainer, pl_module):
        if self.guard is None or self._closed:  # trainer.validate() outside fit: no run to report to
            self._audit_outside_fit(pl_module, "trainer.validate()")
            return
        if trainer.sanity_checking:
            # Lightning's sanity check runs validation_step before step 0: a validation that writes into
            # the model does so here too. Audited and undone like any pass, but not the run's validation:
            # the sidecar is neither asked nor told (allowed None)
            self._val = (self.step, None, self._audit_snapshot(pl_module))
            return
        g = self.guard
        step = self.step  # optimizer steps done (Lightning's global_step unless a rollback re-numbered)
        g.flush(g.deadline)  # the sidecar judges validation on up-to-date state
        allowed, reason = True, ""
        try:
            r = g.transport.call("BeginValidation", pb.BeginValidationRequest(run_id=g.run, rank=g.rank, step=step))
            allowed, reason = r.allowed, r.reason
        except Exception as e:  # grpc.RpcError: fail-open validates with the audit on, closed raises
            g.connection.unreachable("BeginValidation", e)
        from . import distributed as dist_agree
        if dist_agree.is_initialized() and g.world_size > 1:
            allowed = dist_agree.all_true(allowed)
        if not allowed and self.gate_validation:
            # no veto hook in Lightning: the pass runs, its validation_step does nothing
            pl_module.__dict__["validation_step"] = lambda *a, **k: None
            self._val = (step, False, None)
            self._say_refused(step, reason, "its validation_step is skipped: metrics logged there (val_loss) are "
                              "missing for this pass, and callbacks monitoring them fail")
            return
        if not allowed:
            self._say_refused(step, reason, "it runs anyway (gate_validation=False), audited and restored")
        self._val = (step, allowed, self._audit_snapshot(pl_module))

    def _audit_snapshot(self, pl_module):
        g = self.guard
        ours = {h.id for h in g.watch._handles} if g.watch else set()
        if g.watch:
            g.watch.enabled = False
        return ModelSnapshot(pl_module, keep_values=self.restore, ignore_hooks=ours, ignore_attrs=LIGHTNING_BOOKKEEPING)

    def _audit(self, snap):
        """What the pass changed (an audit dict: AUDIT_KINDS, details, restored), undone when ``restore`` is on."""
        diff = snap.diff()
        audit = audit_of(diff, bool(any(diff[:4]) and self.restore))
        if audit["restored"]:
            snap.restore()
        return audit

    def _say_refused(self, step, reason, what):
        level = logging.DEBUG if self._refusal_said else logging.WARNING
        self._refusal_said = True
        log.log(level, "trainguard: the sidecar refused validation at step %d (%s); %s", step,
                reason or "no reason given", what)

    # test() and predict() have no run to report to either: a pass that writes into the model is undone
    def on_test_start(self, trainer, pl_module):
        self._audit_outside_fit(pl_module, "trainer.test()")

    def on_predict_start(self, trainer, pl_module):
        self._audit_outside_fit(pl_module, "trainer.predict()")

    def on_test_end(self, trainer, pl_module):
        self._end_outside_fit()

    def on_predict_end(self, trainer, pl_module):
        self._end_outside_fit()

    def _audit_outside_fit(self, pl_module, what):
        self._outside = AuditedOutsideRun(pl_module, what, restore=self.restore, ignore_attrs=LIGHTNING_BOOKKEEPING)
        self._outside.__enter__()

    def _end_outside_fit(self):
        outside, self._outside = self._outside, None
        if outside is not None:
            outside.__exit__(None, None, None)

    def on_validation_end(self, trainer, pl_module):
        self._end_outside_fit()
        if self._val is None:
            return
        step, allowed, snap = self._val
        self._val = None
        g = self.guard
        if snap is None:
            pl_module.__dict__.pop("validation_step", None)
            self.validations.append((step, False, None))
            return
        if g.watch:
            g.watch.enabled = True
        audit = self._audit(snap)
        if allowed is None:
            self.sanity_check = audit
            if any(audit[k] for k in AUDIT_KINDS):  # the sidecar records the incident (it was asked nothing)
                self._end_validation(step, audit, None)
            self._say_changed("Lightning's sanity check (num_sanity_val_steps)", audit)
            return
        self.validations.append((step, allowed, audit))
        self._end_validation(step, audit, trainer.callback_metrics.get("val_loss"))
        self._say_changed("validation", audit)

    def _end_validation(self, step, audit, metric):
        g = self.guard
        try:
            g.transport.call("EndValidation", pb.EndValidationRequest(
                run_id=g.run, rank=g.rank, step=step, validation_loss=float(metric) if metric is not None else 0.0,
                audit=pb.ValidationAudit(**{k: audit[k] for k in AUDIT_KINDS}, details=audit["details"][:64],
                                         restored=audit["restored"])))
        except Exception as e:
            g.connection.unreachable("EndValidation", e)

    def _say_changed(self, what, audit):
        if not any(audit[k] for k in AUDIT_KINDS):
            return
        self.guard.counters["validation_incidents"] += 1
        log.warning("trainguard: %s changed the model (%s)%s", what, "; ".join(audit["details"][:8]),
                    ", undone" if audit["restored"] else "")
