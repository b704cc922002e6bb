"""Measuring a step on the device: the packed read (host path) and the device gate (no host sync).

Host path: loss, grad norm, loss scale, group norms and the watched modules' statistics are packed
into one float32 tensor and read once (the step's only device->host transfer).

Device gate: the same statistics stay on the device; a skip flag (any of them non-finite) and a
clip divisor are written into two 0-d tensors that a fused optimizer reads as ``found_inf`` and
``grad_scale`` — the update is skipped or clipped in its own kernel. The statistics reach the host
later through pinned memory and a CUDA event, on the sender thread.
"""
from typing import List, NamedTuple

import torch

from . import distributed as dist_agree
from .stats import grad_norms


class Measurement(NamedTuple):
    loss: float
    grad_norm: float
    group_norms: List[float]
    module_names: List[str]
    module_values: List[float]
    loss_scale: float


class StepMeter:
    """Reads one step's statistics with a single device->host transfer."""

    def __init__(self, optimizer, device, scaler=None, watch=None, sharded=False):
        self.optimizer, self.device, self.scaler, self.watch = optimizer, device, scaler, watch
        self.sharded = sharded  # several ranks, each with a shard of the gradients (FSDP): norms are combined
        self._no_scale = None
        self._held = None  # statistics a measurement took but did not use (backward_gate), for the next take

    def _groups(self):
        return [g["params"] for g in self.optimizer.param_groups]

    def read(self, loss):
        """The step's statistics with one device->host transfer: the packed vector (``pack``) with
        the loss scale at its end."""
        names, mods = self.take_watch()
        stats, _, ng = self.pack(self._loss1(loss), torch.stack(mods) if mods else None, tail=self._scale())
        if self.sharded:  # every rank's host path reads together: one all_reduce, in stream order
            stats = dist_agree.global_norms(stats, 1, 1 + ng)
        vals = stats.tolist()  # the step's only device->host transfer
        return Measurement(vals[0], vals[1], vals[2:2 + ng], names, vals[2 + ng:-1], vals[-1])

    def _scale(self):
        if self.scaler is not None and self.scaler.is_enabled():
            # the scale tensor itself: get_scale() would be a second device read per step
            return self.scaler._get_scale_async().detach().float().reshape(1).to(self.device)
        if self._no_scale is None:  # made once: a fresh zeros() would be a kernel every step
            self._no_scale = torch.zeros(1, device=self.device)
        return self._no_scale

    def _loss1(self, loss):
        """The loss as a 1-element tensor on the device; absent (None): 0, the step is judged on its grads."""
        if torch.is_tensor(loss):
            lt = loss.detach().reshape(1)
            return lt if lt.device == self.device else lt.to(self.device)
        return torch.full((1,), 0.0 if loss is None else float(loss), device=self.device)

    def on_device(self, loss, taken=None):
        """(stats, total, n_groups, module_names): stats = [loss, grad_norm, group norms..., module
        stats...] as one float32 device tensor, nothing read. ``taken``: the watch's (names, stats)
        when the caller already took them (``take_watch``)."""
        names, mods = taken if taken is not None else self.take_watch()
        stats, total, ng = self.pack(self._loss1(loss), torch.stack(mods) if mods else None)
        return stats, total, ng, names

    def take_watch(self):
        """This step's module calls: (names, 0-d float32 statistics), and the watch starts afresh."""
        names, mods = self.watch.take_list(self.device) if self.watch else ([], [])
        if self._held is not None:
            (held_names, held_mods), self._held = self._held, None
            return held_names + names, held_mods + mods
        return names, mods

    def hold(self, taken):
        """Puts module statistics taken for a measurement that was not used in front of the next take."""
        if taken is not None and taken[0]:
            names, mods = self._held or ([], [])
            self._held = (names + taken[0], mods + taken[1])

    def pack(self, loss1, mods, tail=None):
        """(stats, total, n_groups): [loss, grad norm, group norms..., module statistics..., tail...]
        from the gradients, a 1-element loss, the stacked module statistics (or None) and an optional
        tail: few launches and little Python per step (``gate_graph`` captures it)."""
        total, per_group = grad_norms(self._groups(), self.device)
        parts = [loss1 if loss1.dtype == torch.float32 else loss1.float(), total.reshape(1), torch.stack(per_group)]
        parts += [t for t in (mods, tail) if t is not None]
        return torch.cat(parts), total, len(per_group)


def skip_flag(stats, head, out=None):
    """Whether a step's update must be skipped, on the device (a bool 0-d tensor, or written into
    ``out``): the loss and gradient norms (``stats[:head]``) NaN or Inf, or a watched output's max |x|
    (the rest) NaN. An output's Inf alone is masking (-inf logits), as on the host (rules.outputs_finite)."""
    bad = torch.logical_not(torch.isfinite(stats[:head]).all())
    if stats.numel() > head:
        return torch.logical_or(bad, torch.isnan(stats[head:]).any(), out=out)
    return bad if out is None else out.copy_(bad)


def momentum_unborn(optimizer):
    """Fused SGD with momentum creates its momentum buffers with ``empty_like`` before its kernel reads
    ``found_inf``: a first update skipped on the device leaves them uninitialised, and the next steps
    use them as momentum. Until the first update made them, its steps take the host path."""
    return (isinstance(optimizer, torch.optim.SGD) and not optimizer.state
            and any(g.get("momentum", 0) for g in optimizer.param_groups))


def optimizer_honours_gate(optimizer):
    """Fused Adam/AdamW/SGD read ``found_inf``/``grad_scale`` (set for GradScaler) in their kernel."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class DeviceGate:
    """Gates a fused optimizer on the device through its ``found_inf`` and ``grad_scale``."""

    def __init__(self, optimizer, device):
        self.optimizer, self.device = optimizer, device
        self._found = None  # device float32 0-d: 1.0 = the optimizer skips (optimizer.found_inf)
        self._scale = None  # device float32 0-d: grads are divided by it (optimizer.grad_scale)
        #: The loop clips the gradients itself between step() and the update (Guard's
        #: ``clipping_configured``; Lightning's gradient_clip_val runs after on_before_optimizer_step).
        #: The divisor, from the norm before that clip, must then not be applied inside
        #: optimizer.step() on top of it: installing the gate returns the in-place clip for the
        #: caller to run at step(), and the loop's clip sees the result, so the smaller threshold wins.
        self.clip_in_place = False

    def buffers(self):
        if self._found is None or self._found.device != self.device:
            self._found = torch.zeros((), dtype=torch.float32, device=self.device)
            self._scale = torch.ones((), dtype=torch.float32, device=self.device)
        return self._found, self._scale

    def install(self, stats, total, threshold, head=None):
        """Writes the skip flag and the clip divisor for this step and points the optimizer at them.
        ``head``: how many of ``stats`` are the loss and gradient norms (the rest: watched outputs)."""
        found, _ = self.buffers()
        # 1.0 when the step is not finite: the fused optimizer then leaves weights, moments and its
        # step counter untouched (as under GradScaler).
        skip_flag(stats, stats.numel() if head is None else head, out=found)
        return self._point(total, threshold)

    def install_agreed(self, skip, norm, inverse_threshold):
        """As ``install``, from what the ranks agreed on the device (distributed.gate_collective):
        ``norm`` and ``inverse_threshold`` (1 / the agreed threshold, 0: no clip) are float64 device
        tensors, multiplied in float64 and written into the float32 divisor. Every rank
        installs the divisor, 1.0 where nothing is clipped: whether a step clips is decided on the
        device, the same on every rank."""
        found, scale = self.buffers()
        found.copy_(skip)
        torch.mul(norm, inverse_threshold, out=scale)
        scale.clamp_(min=1.0)  # max(norm, threshold) / threshold
        return self.point(1.0)

    def _point(self, norm, threshold):
        _, scale = self.buffers()
        if threshold > 0:
            # clip_grad_norm_'s coefficient min(1, thr/norm) as a divisor the fused kernel applies.
            torch.clamp(norm.detach().float(), min=threshold, out=scale)
            scale.div_(threshold)
        return self.point(threshold)

    def point(self, threshold, divisor=True):
        """Points the optimizer at the flag and (with a clip threshold) the divisor: no kernel.
        ``divisor=False``: the caller divides the gradients itself (GateGraphs: a fused kernel given a
        ``grad_scale`` writes every gradient back, a step's worth of memory traffic for a rare clip).
        Returns what the caller must run at step(), before the update: with ``clip_in_place``, the
        clip the optimizer is then not given; else None. ``install`` and ``install_agreed`` return it too."""
        found, scale = self.buffers()
        opt = self.optimizer
        opt.found_inf = found
        clips = threshold > 0 and divisor
        if clips and not self.clip_in_place:
            opt.grad_scale = scale
            return None
        opt.__dict__.pop("grad_scale", None)
        return self._divide_in_place if clips else None

    def _divide_in_place(self):
        """Divides every gradient by the divisor unless the step is skipped (the optimizer leaves the
        weights alone then anyway). One pass over the gradients."""
        found, scale = self.buffers()
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, scale.reciprocal().masked_fill_(found > 0, 1.0))

    def flag(self, value):
        """A 0-d device tensor holding ``value`` (a fill kernel: no host->device copy, no sync)."""
        return torch.full((), 1.0 if value else 0.0, dtype=torch.float32, device=self.device)

    def uninstall(self):
        """No stale device flag may gate a step decided on the host (or an unguarded one)."""
        self.optimizer.__dict__.pop("found_inf", None)
        self.optimizer.__dict__.pop("grad_scale", None)

    def stage(self, *tensors):
        """Starts the copy of ``tensors`` to the host; returns ([host tensors], event to wait on or None)."""
        if self.device.type == "cuda":
            hosts = []
            for t in tensors:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                hosts.append(host)
            # blocking: the sender thread sleeps on it instead of spinning a core until the step's end
            event = torch.cuda.Event(blocking=True)
            event.record()
            return hosts, event
        return [t.clone() for t in tensors], None  # copies: a staged tensor may change later (the loss scale)
