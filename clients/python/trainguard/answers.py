"""The sidecar's answers that arrive outside a step's own call: OpenRun's (pre-flight findings,
the first LocalBounds, resume) and the verdicts of asynchronous reports, which run on the sender
thread: new bounds, the validation hint, and a ROLLBACK/HALT for an earlier step (``guard._late``,
applied at the next step) or, fail-closed, the error of a report that failed."""
import logging
import warnings

from .errors import RunRefused
from .run_setup import open_request
from .verdict import Action, LocalBounds, Verdict
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")


def open_run(guard, deadline):
    g = guard
    resp = g.connection.open_run(g.run, open_request(g), deadline)
    if resp is None:
        return
    g.findings = [(f.code, pb.Severity.Name(f.severity), f.message) for f in resp.findings]
    for code, sev, msg in g.findings:  # pre-flight audit, a rank held elsewhere
        log.log(logging.INFO if sev == "SEVERITY_INFO" else logging.WARNING, "trainguard: OpenRun %s %s: %s", sev, code, msg)
    g.resumed = resp.resumed
    g.recovery.opened(resp)
    if resp.HasField("bounds"):
        g.bounds = LocalBounds.from_proto(resp.bounds)


def reopen(guard):
    """The periodic OpenRun of a client gone offline. A run closed meanwhile (another Guard with the same
    run id closed it: a notebook cell run twice, two models' Guards sharing an id) is refused: in
    fail-open mode that is said once, in words, and training goes on unprotected instead of raising
    RunRefused mid-run."""
    try:
        open_run(guard, guard.deadline)
    except RunRefused as e:
        if guard.failure_mode == "closed":
            raise
        guard.connection.went_offline()
        if not guard.__dict__.get("_closed_under_said"):
            guard._closed_under_said = True
            msg = (f"trainguard: run '{guard.run}' was closed under this Guard ({e}): another Guard or process "
                   f"with the same run id closed it. This Guard goes on NOT PROTECTED (failure_mode='open'): give "
                   f"each Guard its own run id")
            log.error("%s", msg)
            warnings.warn(msg, RuntimeWarning)


def on_report_result(guard, fut):
    """Runs on the sender thread when a report's verdict (or error) arrives."""
    g = guard
    if fut.error is not None:
        if not fut.blocking:
            with g._lock:
                g.counters["sidecar_failures"] += 1
                if g.failure_mode == "closed" and g._async_error is None:
                    g._async_error = fut.error
            if g.failure_mode != "closed":  # a sidecar that died mid-run: said at its first lost report
                g.connection.lost("ReportStep", fut.error)
        return
    g.connection.answered()
    v = fut.response.verdict
    with g._lock:
        if v.HasField("bounds"):
            g.bounds = LocalBounds.from_proto(v.bounds)
        g._validation_hint = v.validation_allowed
        if not fut.blocking and fut.generation == g.generation and v.action in (Action.ROLLBACK, Action.HALT):
            late = Verdict.from_proto(v)
            if g._late is None or late.action > g._late.action:
                g._late = late
