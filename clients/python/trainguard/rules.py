"""Local decision rules: pure functions of the step's numbers and the sidecar's LocalBounds.

No torch, no gRPC, no state: every rule the client applies without asking the sidecar is here, so
that it can be read (and tested) in one place. The sidecar stays the authority: these rules only
decide steps the sidecar has pre-authorised (within its bounds), the GradScaler's own overflow
skips, and — when the sidecar is unreachable in fail-open mode — the never-apply-non-finite rule.
"""
import math

from .verdict import Action, Verdict


def within_bounds(bounds, loss, grad_norm):
    """Whether loss and grad norm lie within the bounds (a bound of 0 is no bound)."""
    return ((bounds.max_grad_norm <= 0 or grad_norm <= bounds.max_grad_norm)
            and (bounds.max_loss <= 0 or loss <= bounds.max_loss))


def may_decide_locally(bounds, step, loss, grad_norm, finite):
    """A finite step within usable bounds needs no round trip to the sidecar. Bounds without a finite
    limit (the sidecar has no baseline yet: its first steps) are no such authorisation on the host
    path: a spike there must reach the sidecar before the update."""
    return (finite and bounds is not None and bounds.usable(step) and bounds.learned()
            and within_bounds(bounds, loss, grad_norm))


def outputs_finite(module_values):
    """Whether the watched outputs (their max |x|) let a step count as finite: no NaN. An output's
    ±Inf alone does: a module that masks with -inf (attention scores, invalid actions, a vocabulary)
    puts infinities in its output on purpose, and an Inf that reaches the update shows in the loss
    or the gradients. The device gate applies the same rule (measure.skip_flag), and so does the
    sidecar (NonFiniteFinding)."""
    return not any(map(math.isnan, module_values))


def step_finite(loss, grad_norm, module_values):
    return math.isfinite(loss) and math.isfinite(grad_norm) and outputs_finite(module_values)


def charged_output(names, loss, grad_norm, module_values):
    """The watched output a non-finite step is charged to: the first in forward order whose max |x|
    is NaN or Inf (an fp16 overflow shows as Inf before the NaN it makes downstream); "" for a
    finite step, whose infinities are masking."""
    if step_finite(loss, grad_norm, module_values):
        return ""
    return next((n for n, v in zip(names, module_values) if not math.isfinite(v)), "")


def is_scaler_overflow(scaler_on, loss, grad_norm, module_values=()):
    """Finite loss and activations, non-finite grads under an enabled GradScaler: the scaler's own
    business (it skips the step and lowers the scale), not an incident. A NaN in a watched
    activation is the model's fault, whatever the loss passed (with gradient accumulation, the last
    micro-batch's) says."""
    return scaler_on and math.isfinite(loss) and not math.isfinite(grad_norm) and outputs_finite(module_values)


def clip_action(threshold, grad_norm):
    """CLIP only when a threshold is set and the norm exceeds it; a healthy step stays APPLY."""
    return Action.CLIP if threshold > 0 and grad_norm > threshold else Action.APPLY


def clip_reason(grad_norm, threshold, source):
    """Every CLIP says why: the norm, the threshold and where the threshold came from."""
    return f"grad norm {grad_norm:.4g} > clip threshold {threshold:.4g} ({source}): gradients scaled to the threshold"


def decide_locally(step, grad_norm, bounds, scaler_overflow, validation_allowed):
    if scaler_overflow:
        return Verdict(step, Action.SKIP, reasons=["GradScaler overflow: loss scale lowered"], decided_locally=True,
                       scaler_overflow=True)
    thr = bounds.clip_threshold if bounds else 0.0
    action = clip_action(thr, grad_norm)
    reasons = [clip_reason(grad_norm, thr, "the run's clip policy, decided locally")] if action == Action.CLIP else []
    return Verdict(step, action, clip_threshold=thr, validation_allowed=validation_allowed, reasons=reasons,
                   bounds=bounds, decided_locally=True)


def decide_offline(step, grad_norm, finite, clip_threshold):
    """Fail-open decision without the sidecar: never apply a non-finite update."""
    if not finite:
        return Verdict(step, Action.SKIP, reasons=["non-finite loss or gradients (sidecar unreachable)"],
                       degraded=True, decided_locally=True)
    action = clip_action(clip_threshold, grad_norm)
    reasons = ([clip_reason(grad_norm, clip_threshold, "last known clip policy; sidecar unreachable")]
               if action == Action.CLIP else [])
    return Verdict(step, action, clip_threshold=clip_threshold, degraded=True, decided_locally=True, reasons=reasons)


def gate_threshold(bounds):
    """The clip applied on the device: the sidecar's clip threshold, and never above the bound
    beyond which the sidecar must be asked (a finite spike is clipped to it meanwhile)."""
    thr = bounds.clip_threshold if bounds.clip_threshold > 0 and math.isfinite(bounds.clip_threshold) else 0.0
    m = bounds.max_grad_norm
    if m > 0 and math.isfinite(m):
        thr = min(thr, m) if thr > 0 else m
    return thr


def gated_outcome(loss, grad_norm, module_values, threshold, bounds):
    """What the device gate did to a step, recomputed on the host from the same numbers:
    (finite: the update ran, clipped: its grads were scaled down, in_bounds: no sidecar needed)."""
    finite = step_finite(loss, grad_norm, module_values)
    clipped = finite and threshold > 0 and grad_norm > threshold
    return finite, clipped, within_bounds(bounds, loss, grad_norm)
