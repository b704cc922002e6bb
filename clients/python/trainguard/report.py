"""The one place a StepReport is built, for the host path and the device gate alike."""
import math

from ._proto.trainguard.v1 import trainguard_pb2 as pb


def step_report(run, rank, step, *, loss, grad_norm, group_norms, learning_rate, step_time, loss_absent,
                module_names=(), module_values=(), loss_scale=0.0,
                decided_locally=False, skipped_by_agreement=False, applied_clip_threshold=0.0):
    """``module_values`` are the watched module calls' max |x| in call order (sent as ``max_abs``, and
    as ``finite`` flags).
    ``skipped_by_agreement``: several ranks skipped this update together on the device although this
    rank's own values were finite (the sidecar then records a SKIP and learns nothing from them).
    ``applied_clip_threshold``: with ``decided_locally``, what the client clipped the update to (0: not
    clipped), which the sidecar records as the step's CLIP."""
    values = list(module_values)
    report = pb.StepReport(run_id=run, rank=rank, step=step, loss=loss, grad_norm=grad_norm,
                           group_grad_norms=list(group_norms), learning_rate=learning_rate, loss_scale=loss_scale,
                           module_stats=pb.ModuleStats(names=list(module_names),
                                                       finite=[math.isfinite(x) for x in values],
                                                       max_abs=values),
                           loss_absent=loss_absent, decided_locally=decided_locally,
                           skipped_by_agreement=skipped_by_agreement,
                           applied_clip_threshold=applied_clip_threshold if decided_locally else 0.0)
    report.step_time.FromNanoseconds(int(step_time * 1e9))
    return report
