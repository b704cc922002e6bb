"""Measuring and gating a step when its backward ends, not when ``step()`` is called.

A loop that reads the loss on the host between ``backward()`` and ``step()`` (a ``loss.item()``
for logging, the Hugging Face Trainer's NaN filter) leaves the GPU idle from that read until the
host launches the next kernel. Whatever the guard launches then is on the step's critical path,
and it runs on a "cold" host: on an H200 the same measure-and-gate costs ~690 µs there against
~100 µs while the GPU is still busy (docs/benchmarks.md, Issue 21 third pass).

``guard.gate_on_backward(loss)`` before ``loss.backward()`` puts the measure-and-gate, and the copy
of its statistics to the host, at the end of that backward instead (an autograd final callback, on
the thread that runs backward, while the GPU still has backward kernels queued). ``step()`` then uses that measurement if it still describes the
gradients the optimizer will read: every gradient the same tensor at the same version (no
reassignment, no in-place write since but the ones the loop vouches for: a multiply by exactly 1.0,
``noop_writes``, or one ``clip_grad_norm_`` to ``clip_max_norm``, whose factor the landed statistics
tell, or which leaves the gradients under the guard's own clip threshold), the same clip threshold,
the same loss. If not,
``step()`` measures again, as it would have without the call, so the early measurement can make a
step faster but never decide it on stale numbers.

Only a single-rank device-gated step without an enabled GradScaler is measured early (several ranks
agree in a collective at ``step()``; a GradScaler unscales in place at ``step()``).
"""
import functools
import logging
import math
import operator
from itertools import chain

import torch

from . import apply as apply_
from . import rules
from .verdict import LocalBounds

log = logging.getLogger("trainguard")


class Early:
    """One backward's measurement: the gate is installed and its statistics are on their way to the
    host (``staged``: DeviceGate.stage's host tensors and event), so ``step()`` launches nothing for it
    but the clip (``clip``, GateGraphs.measure_and_install), which only the step that uses it may run."""

    def __init__(self, n_groups, names, mods, threshold, loss, grads, staged, clip):
        self.n_groups, self.names, self.mods = n_groups, names, mods
        self.threshold, self.loss, self.grads = threshold, loss, grads
        # every gradient a plain tensor (none missing, no subclass): BackwardGate._holds checks them
        # in C loops; else one by one, as here
        self.plain = all(type(t) is torch.Tensor for t in grads)
        # ptrs: where each gradient lies: ``grad.data = ...`` swaps the storage without a version
        # bump, and the clip writes through the addresses measured here
        if self.plain:
            self.versions = list(map(_version_of, grads))
            self.ptrs = list(map(_data_ptr, grads))
        else:
            self.versions = [-1 if t is None else t._version for t in grads]
            self.ptrs = [0 if t is None else t.data_ptr() for t in grads]
        self.staged, self.clip = staged, clip
        # the statistics' host copy read without a tensor index (_loop_clip): [loss, grad norm, ...]
        self.host_stats = _host_view(staged[0][0]) if staged is not None and staged[0] else None


class BackwardGate:
    """Arms a loss so its backward ends with the step measured and gated (``Early``)."""

    def __init__(self, guard):
        self.g = guard
        self.enabled = True
        #: in-place writes per gradient between backward and step() that the caller vouches leave its
        #: values unchanged (the HF Trainer's clip_grad_norm_(inf), a multiply by 1.0, every step)
        self.noop_writes = 0
        #: ``max_norm`` of a ``clip_grad_norm_(params, max_norm)`` the loop runs between backward and
        #: step() (the HF Trainer's ``max_grad_norm``, Accelerate's ``clip_grad_norm_``). Its one write
        #: multiplies every gradient by ``min(1, max_norm / (norm + 1e-6))``, which the measurement's own
        #: statistics say once they reached the host: the measurement then still holds (``_loop_clip``).
        self.clip_max_norm = None
        self._armed = None   # (detached loss, stream) of the backward to measure at its end
        self._early = None
        # dropped: superseded by a later backward, or the step went to the host path
        self.counters = {"measured": 0, "used": 0, "stale": 0, "dropped": 0}

    def eligible(self):
        """Whether the coming step will be gated as ``step()`` gates it (else it would be measured
        here for nothing), without a GradScaler (it unscales in place at ``step()``)."""
        g = self.g
        return (self.enabled and not g.connection.paused and g._one_rank_gate_open(g.next_step())
                and g._late is None and g._async_error is None
                and not g.scaler_on)

    def arm(self, loss, anchor=None):
        """Call before ``loss.backward()``; a no-op where the step cannot be measured early. With no
        loss (the loop computes it outside the model, as the HF Trainer does under label smoothing),
        ``anchor``, any tensor of the forward that the backward passes through (the logits), arms it:
        the step is then measured with its loss absent, as ``step(k, None)`` measures it. A ``loss`` that
        needs no gradient (detached: the sum of a gradient-accumulation cycle's micro-batch losses) is
        measured while the hook sits on ``anchor`` (the last micro-batch's own loss); ``step()`` must
        then get that same tensor (``_holds``)."""
        on = loss if anchor is None or (torch.is_tensor(loss) and loss.requires_grad) else anchor
        if not (torch.is_tensor(on) and on.requires_grad and self.eligible()):
            return False
        stream = torch.cuda.current_stream(on.device) if on.device.type == "cuda" else None
        self._armed = (None if loss is None else loss.detach(), stream)
        on.register_hook(self._on_loss_grad)
        return True

    def release_on(self, loss):
        """A backward that is not measured (an earlier micro-batch of an accumulation cycle) still
        lets the held report go when it starts: a no-op without a loss that needs a gradient."""
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.register_hook(self._release)

    def _release(self, grad):
        self.g.sender.release()
        return None

    def _on_loss_grad(self, grad):
        # The first thing backward computes; the callback runs once the whole backward is done.
        torch.autograd.Variable._execution_engine.queue_callback(self._measure)
        # The last step's report was held for this moment: the training thread waits for the
        # backward now, without the GIL, so the sender's Python work costs it nothing.
        self.g.sender.release()
        return None

    def _measure(self):
        armed, self._armed = self._armed, None
        self.discard()  # a later backward (gradient accumulation) supersedes an earlier one
        if armed is None or not self.eligible():
            return
        loss, stream = armed
        try:
            if stream is None:
                self._early = self._measure_now(loss)
            else:
                with torch.cuda.stream(stream):  # the caller's stream: backward's leaf streams synced to it
                    self._early = self._measure_now(loss)
            if self._early is not None:
                self.counters["measured"] += 1
        except Exception as e:  # never fail the user's backward: step() measures as usual
            self.enabled = False
            log.warning("trainguard: measuring at the end of backward failed (%s: %s); steps are measured at "
                        "step() from now on", type(e).__name__, e)

    def _measure_now(self, loss):
        g = self.g
        # the coming step's clip threshold comes with the last verdicts, as in step(); on a timeout
        # step() waits and acts itself, and a verdict that came may have changed the path
        if not g.gated.await_verdicts(g.next_step(), act_on_timeout=False) or not self.eligible():
            return None
        thr = rules.gate_threshold(g.bounds or LocalBounds())
        names, mods = g.meter.take_watch()  # kept in Early: a re-measure at step() needs them again
        stats, ng, names, clip = g.gated.graphs.measure_and_install(loss, thr, taken=(names, mods))
        grads = _grads(g.optimizer)
        # Staged here too, in stream order after the graph: the copy and its event are host work
        # that would otherwise fall after the loop's loss read.
        staged = g.gate.stage(stats)
        return Early(ng, names, mods, thr, loss, grads, staged, clip)

    def take(self, loss, threshold):
        """This step's early measurement, (n_groups, names, staged, clip) with the gate installed, if it
        still describes what the optimizer will read; else None, and ``step()`` measures again."""
        early, self._early = self._early, None
        if early is None:
            return None
        loop_clip = self._loop_clip(early, threshold)
        if self._holds(early, loss, threshold, loop_clip is not None):
            self.counters["used"] += 1
            clip = early.clip
            if loop_clip is BELOW_THRESHOLD:
                clip = None
            elif loop_clip is not None and loop_clip[1] < 1.0:
                clip = _clip_after_the_loops(self.g.optimizer, loop_clip, threshold)
            return early.n_groups, early.names, early.staged, clip
        self.counters["stale"] += 1
        self.g.meter.hold((early.names, early.mods))
        return None

    def discard(self):
        """Drops an unused measurement; its module statistics go to the next one."""
        early, self._early = self._early, None
        if early is not None:
            self.counters["dropped"] += 1
            self.g.meter.hold((early.names, early.mods))

    def _holds(self, early, loss, threshold, loop_clipped):
        if threshold != early.threshold:
            return False
        if early.loss is None:  # armed without a loss: the step must be judged without one too
            if loss is not None:
                return False
        elif not (torch.is_tensor(loss) and loss.device == early.loss.device
                  and loss.data_ptr() == early.loss.data_ptr() and loss.shape == early.loss.shape):
            return False
        writes = self.noop_writes + (1 if loop_clipped else 0)
        # On the step's critical path (right after the loop's loss read): the checks run as C loops
        # over the gradient list (map, list compares), not a Python loop per parameter.
        now = _grads(self.g.optimizer)
        if len(now) != len(early.grads) or not all(map(operator.is_, now, early.grads)):
            return False  # a gradient reassigned (or one more, or one fewer)
        if not early.plain:  # a parameter without a gradient, or a tensor subclass: one by one
            return all(t is None or (0 <= t._version - v <= writes and t.data_ptr() == ptr)
                       for t, v, ptr in zip(now, early.versions, early.ptrs))
        versions = list(map(_version_of, now))
        if versions != early.versions:  # written in place since: only as many writes as vouched for
            deltas = set(map(operator.sub, versions, early.versions))
            if min(deltas) < 0 or max(deltas) > writes:
                return False
        return _ptrs_equal(now, early.ptrs)

    def _loop_clip(self, early, threshold):
        """What the loop's ``clip_grad_norm_(max_norm)`` did to the measured gradients: (their norm
        measured here, the factor it multiplied them by: ``min(1, max_norm / (norm + 1e-6))``, exactly
        1.0 below max_norm); ``BELOW_THRESHOLD`` when the statistics have not landed yet (never a wait
        here: a loop that does not read the loss on the host, as the Trainer under hf_loss_filter) but
        the guard's threshold is off or at least max_norm, so whatever the factor, the guard's clip has
        nothing left to do (a non-finite norm, not known yet there, is skipped by the gate the
        measurement installed); None when unknown otherwise: no max_norm, not landed, or a landed
        non-finite norm (the clip made the gradients NaN; the step is measured again). The
        measurement stays valid either way: a finite gradient scaled down stays finite, and its norm before the clip is the
        one to judge (the Trainer logs that one too)."""
        if self.clip_max_norm is None:
            return None
        hosts, event = early.staged
        if event is not None and not event.query():
            return BELOW_THRESHOLD if threshold <= 0 or threshold >= self.clip_max_norm else None
        # [loss, grad norm, ...]: one numpy read where the copy has a view (no tensor index and item)
        norm = early.host_stats.item(1) if early.host_stats is not None else float(hosts[0][1])
        if not math.isfinite(norm):
            return None
        return norm, min(1.0, self.clip_max_norm / (norm + 1e-6))


#: ``_loop_clip``'s answer when the loop's clip leaves the gradients under the guard's threshold
BELOW_THRESHOLD = (math.nan, math.nan)


def _clip_after_the_loops(optimizer, loop_clip, threshold):
    """The guard's clip for gradients the loop has already scaled down: the early measurement's clip
    divides by ``norm / threshold`` from the norm before the loop's clip, which would shrink them
    twice. Their norm now is ``norm * factor``; only above the guard's threshold are they scaled
    further, to it. None: nothing to do."""
    norm, factor = loop_clip
    now = norm * factor
    if not (threshold > 0 and now > threshold):
        return None
    return lambda: apply_.clip_gradients(optimizer, threshold, now)


_grad_of = operator.attrgetter("grad")
_version_of = operator.attrgetter("_version")
_data_ptr = torch.Tensor.data_ptr  # only on plain tensors (Early.plain): no override to honour


def _grads(optimizer):
    """Every parameter's ``.grad``, in the optimizer's order, read in a C loop."""
    groups = optimizer.param_groups
    if len(groups) == 1:
        return list(map(_grad_of, groups[0]["params"]))
    return list(map(_grad_of, chain.from_iterable(map(operator.itemgetter("params"), groups))))


@functools.lru_cache(maxsize=8)
def _all_indices(n):
    """[0, n): the same list every step (the parameter count does not change), not a new one."""
    return list(range(n))


def _ptrs_equal(grads, ptrs):
    """Whether every gradient still lies at its measured address (plain tensors: ``t.data_ptr()``),
    in one C call where torch has it (>= 2.1, the check CUDA graph trees use), else a C-level map."""
    if _PTRS_AT is not None:
        return _PTRS_AT(grads, ptrs, _all_indices(len(grads)))
    return list(map(_data_ptr, grads)) == ptrs


_PTRS_AT = getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", None)


def _host_view(host):
    """A numpy view of a staged host tensor (shares its memory: reads what the copy landed), or None
    where numpy cannot view it (bfloat16, no numpy)."""
    try:
        return host.numpy()
    except Exception:
        return None
