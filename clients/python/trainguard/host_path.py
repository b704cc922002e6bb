"""The host-path step: the step's statistics are read once on the host (one packed read), a faulty
step may be replayed at once (``recovery.maybe_replay``), and the verdict is decided locally
within the sidecar's LocalBounds, asked of the sidecar, or -- unreachable in fail-open mode --
decided by the offline rule. Taken when the device gate is off or cannot decide this step
(bounds expired, a late ROLLBACK/HALT, offline, an optimizer without found_inf, a GradScaler on
torch < 2.4)."""

from . import rules
from .protect import say_corrupt_state
from .errors import SidecarUnavailable
from .report import step_report
from .verdict import Action, Verdict


def step(guard, step, loss, step_time, late, replay=None):
    """Measures, decides and returns the verdict (not yet applied) and the grad norm."""
    g = guard
    scaler_on = g.scaler_on
    if scaler_on:
        unscale_once(g)
    m = g.meter.read(loss)
    # Called on every host-path step (also with a late verdict, which suppresses the replay):
    # with several ranks it runs a collective that every rank must join.
    m, fault_class = g.recovery.maybe_replay(step, m, replay, g.meter, suppress=late is not None,
                                             loss_absent=loss is None)
    finite = rules.step_finite(m.loss, m.grad_norm, m.module_values)
    lr = g.recovery.lr.effective(float(g.optimizer.param_groups[0].get("lr", 0.0)))  # with a cut made at the update
    report = step_report(g.run, g.rank, step, loss=m.loss, grad_norm=m.grad_norm, group_norms=m.group_norms,
                         learning_rate=lr, step_time=step_time, loss_absent=loss is None, module_names=m.module_names,
                         module_values=m.module_values, loss_scale=m.loss_scale)
    scaler_overflow = rules.is_scaler_overflow(scaler_on, m.loss, m.grad_norm, m.module_values)
    if not finite and not scaler_overflow and late is None:
        say_corrupt_state(g, step)  # weights, optimizer state or an LR non-finite before the step: said
    offline = g.connection.offline
    if late is not None:
        verdict = late  # a ROLLBACK/HALT for an earlier step: this step's update is dropped too
    elif scaler_overflow or (g.mode == "async" and not offline
                             and rules.may_decide_locally(g.bounds, step, m.loss, m.grad_norm, finite)):
        g.counters["local_decisions"] += 1
        verdict = rules.decide_locally(step, m.grad_norm, g.bounds, scaler_overflow, g._validation_hint)
        report.decided_locally = True
        if verdict.action == Action.CLIP:  # what the update is clipped to: the sidecar records it
            report.applied_clip_threshold = verdict.clip_threshold
        g.sender.submit(report, g.generation, blocking=False)
    elif offline:
        verdict = decide_offline(g, step, m.grad_norm, finite)
    else:
        verdict = ask_sidecar(g, report, step, m.grad_norm, finite)
    if fault_class is not None:
        v = verdict[0] if isinstance(verdict, tuple) else verdict
        v.fault_class = fault_class.name
    return verdict, m.grad_norm


def stepped_optimizer(guard):
    """The object the loop steps (the wrapper when it has one): GradScaler keeps its per-iteration
    state under that object's id."""
    return guard._wrapped if guard._wrapped is not None else guard.optimizer


def unscale_once(guard):
    """Unscales the gradients for the GradScaler unless the loop (or GradScaler.step on the
    wrapper) already did in this iteration; keyed by the object the loop steps, so that
    ``scaler.step(opt)`` on the wrapper does not unscale a second time."""
    target = stepped_optimizer(guard)
    st = getattr(guard.scaler, "_per_optimizer_states", {})
    st = st.get(id(target)) if hasattr(st, "get") else None
    if st is None or getattr(st.get("stage"), "name", "READY") == "READY":
        guard.scaler.unscale_(target)
    guard._unscaled = True


def ask_sidecar(guard, report, step, gnorm, finite):
    """A blocking ReportStep. Returns the sidecar's verdict, or (HALT verdict, error) in fail-closed
    mode, or the offline decision in fail-open mode."""
    g = guard
    fut = g.sender.submit(report, g.generation, blocking=True)
    # Earlier async reports are ahead of it in the queue (a fast loop's backlog). A sidecar that
    # answers none of them within the deadline is away; one that keeps answering is there, just behind.
    answered = g.sender.answered
    while not fut.wait(g.deadline + 0.05) and g.sender.answered != answered:
        answered = g.sender.answered
    if fut.done() and fut.error is None:
        g.counters["sidecar_verdicts"] += 1
        v = Verdict.from_proto(fut.response.verdict)
        if v.action == Action.CLIP and not v.reasons:
            v.reasons = [rules.clip_reason(gnorm, v.clip_threshold, "the sidecar's clip policy")]
        return v
    err = fut.error or TimeoutError(f"no verdict within {g.deadline}s")
    g.connection.went_offline()
    try:
        g.connection.unreachable("ReportStep", err)
    except SidecarUnavailable as e:
        return Verdict(step, Action.HALT, reasons=[str(e)], degraded=True), e
    return decide_offline(g, step, gnorm, finite)


def decide_offline(guard, step, gnorm, finite):
    if guard.failure_mode == "closed":
        raise SidecarUnavailable(f"trainguard sidecar at {guard.transport.target} is unreachable "
                                 f"(failure_mode='closed')")
    thr = ((guard.bounds.clip_threshold if guard.bounds else 0.0)
           or float(guard.policy_overrides.get("clip_threshold", 0.0)))
    return rules.decide_offline(step, gnorm, finite, thr)
