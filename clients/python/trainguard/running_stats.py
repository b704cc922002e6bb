"""Normalization statistics (and other buffers the forward writes) a skipped step must not keep.

BatchNorm (and InstanceNorm with ``track_running_stats``) updates ``running_mean`` / ``running_var``
(and ``num_batches_tracked``) in its forward, before anything is judged. A step the guard skips keeps the weights as they were,
but a NaN batch has already written NaN into those statistics: training goes on looking healthy
(in train mode BatchNorm normalizes with the batch's own statistics) and the model evaluates to NaN
for every input. So after each judged step the statistics are settled on the device: where the
step was skipped, or where a value is not finite, the value from the last step that kept them is
put back; elsewhere this step's values become the ones kept. One concatenation, one ``where`` and
one ``_foreach_copy_`` per device and dtype, no host read: the same on the device gate, whose skip
is a device flag. A ROLLBACK restores them with the model, and they are kept from there. Other
buffers a training forward writes are found in its first steps (forward_writes.py) and settled alike.
"""
import torch

from .forward_writes import ForwardWrites
from .hooks import Detached
from .stats import _tracing

# num_batches_tracked too: BatchNorm(momentum=None) averages by it, and a skipped batch must not count
_STATS = ("running_mean", "running_var", "num_batches_tracked")


class RunningStats:
    def __init__(self, model, step_buffers=()):
        """``step_buffers``: other tensors the forward writes (``Guard(step_buffers=...)``): a MoCo key
        queue and its pointer, a memory bank. A skipped step's enqueue of NaN keys would otherwise stay
        in the queue and make the next steps NaN too."""
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
        tensors = [getattr(m, n) for m in norms for n in _STATS if torch.is_tensor(getattr(m, n, None))]
        seen = set(map(id, tensors))
        for t in step_buffers:
            if not torch.is_tensor(t):
                raise TypeError(f"step_buffers takes tensors (the module's buffers themselves), not {type(t).__name__}")
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
        self._groups = []
        self._add([(t, t.detach()) for t in tensors])  # cat() copies them
        self._writes = ForwardWrites(model, seen)
        # What a skip puts back is the value at the step's first training forward, not at the last
        # settling: a loop's own writes in between (PreciseBN's recomputed statistics, a VQ codebook's
        # dead-code restart) are kept. The root's forward marks it; an integration whose step calls
        # submodules (Lightning's training_step) calls step_begins() itself.
        self._fresh = True
        self._handle = model.register_forward_pre_hook(Detached(self._root_forward)) if self else None

    def _add(self, tensors_and_kept):
        groups = {}
        for t, kept in tensors_and_kept:
            groups.setdefault((t.device, t.dtype), []).append((t, kept))  # an integer counter is always finite
        self._groups += [_Group([t for t, _ in rows], [k for _, k in rows]) for rows in groups.values()]

    def __bool__(self):
        return bool(self._groups) or bool(self._writes)

    def _root_forward(self, module, args):
        if self._fresh and module.training and torch.is_grad_enabled() and not _tracing.compiling():
            self.step_begins()

    def step_begins(self):
        """The step's first training forward is about to run: what is there now is what a skip puts back."""
        if self._fresh:
            self._fresh = False
            for g in self._groups:
                g.keep_current()

    def settle(self, skip):
        """``skip``: whether this step's update is dropped (a bool), or the device gate's flag (a 0-d
        tensor, > 0: skipped)."""
        self._add(self._writes.end_step())  # buffers this step's forwards were found writing
        for g in self._groups:
            g.settle(skip)
        self._fresh = True
        if not self and self._handle is not None:  # nothing found: the model's forward goes unhooked
            self._handle.remove()
            self._handle = None

    def keep_current(self):
        """The statistics as they are now are the ones kept (after a ROLLBACK restored them)."""
        self._writes.discard_step()
        for g in self._groups:
            g.keep_current()
        self._fresh = True

    def settled_ids(self):
        """ids of the tensors a skipped step puts back."""
        return {id(t) for g in self._groups for t in g.tensors} | self._writes.found_ids()

    def remove(self):
        """The Guard closed: the hooks that look for written buffers go."""
        self._writes.remove()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class _Group:
    """The statistics of one device and dtype, kept in one flat tensor."""

    def __init__(self, tensors, kept):
        """``kept``: each tensor's value to put back on a skip, until a kept step replaces it."""
        self.tensors = tensors
        self.kept = torch.cat([k.reshape(-1) for k in kept])
        self._views = list(torch.split(self.kept, [t.numel() for t in tensors]))
        self._views = [v.view(t.shape) for v, t in zip(self._views, tensors)]

    def settle(self, skip):
        with torch.no_grad():
            if skip is True:
                now_bad = None
            else:
                now = torch.cat([t.reshape(-1) for t in self.tensors])
                now_bad = ~torch.isfinite(now)
                if torch.is_tensor(skip):
                    now_bad |= skip.to(now.device) > 0
                torch.where(now_bad, self.kept, now, out=self.kept)
            _copy(self.tensors, self._views)

    def keep_current(self):
        # into the views of the kept copy: no concatenation allocated (this runs at every step's first forward)
        with torch.no_grad():
            _copy(self._views, [t.detach() for t in self.tensors])


def _copy(dst, src):
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:  # torch < 2.1
        for d, s in zip(dst, src):
            d.copy_(s)
