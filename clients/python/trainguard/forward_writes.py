"""Finds the buffers a training forward writes, so that a skipped step's writes are undone with it.

Besides normalization statistics (running_stats.py knows those by their module type), forwards write
other buffers in place: spectral norm's power-iteration vectors (``_u``, ``_v``), a VQ-VAE's EMA
codebook (``cluster_size``, ``embed_avg``), a MoCo key queue and its pointer, a memory bank,
quantization observers. A skipped NaN batch has already written there; left so, the next steps read
NaN and the run is rolled back for a fault it had avoided.

Every module that owns such a candidate buffer gets a forward pre-hook and a forward hook for the
first ``STEPS`` judged steps that ran a training forward: the first call of a step keeps each of the
module's buffers (its version counter and a copy); a buffer whose version moved during a forward and
whose value differs from the step's start was written by that forward, if the call's output is
something backward goes through. DDP's broadcast of buffers happens before the inner modules run,
and a loop's own write after the update (an EMA kept in buffers, or an EMA module called with the
model: latent diffusion's ``LitEma``, whose call returns nothing for backward) is no such forward, so
neither is taken for one. Hooks on the owning modules, not
on the root, see a LightningModule's ``training_step`` that calls a submodule directly.

Not found: a buffer written only later than the first ``STEPS`` steps, one a forward rebinds
(``self.queue = torch.cat(...)``: warned, it cannot be put back in place), and writes inside a
module ``torch.compile`` traced (its hooks run in the trace, where nothing is read); the compiled
wrapper itself (``torch.compile(model)`` handed to the Guard) is watched from outside the graph.
``Guard(step_buffers=[...])`` names such buffers.
"""
import logging

import torch

from .hooks import Detached
from .stats import _tracing, grad_tensors

log = logging.getLogger("trainguard")


class ForwardWrites:
    STEPS = 4  # judged steps with a training forward that are watched

    def __init__(self, model, covered):
        """``covered``: ids of the tensors already settled (normalization statistics, step_buffers)."""
        self._owned = {}  # id(module) -> [(module, "_buffers" or "_parameters", name)]
        self._handles = []
        self._calls = {}  # id(module) -> [{id(tensor): (tensor, copy)} per call under way]: what each call found
        self._start = {}  # id(tensor) -> its copy at the step's first call of its module: what a skip puts back
        self._found = {}  # id(tensor) -> (tensor, its value at the step's start): to be settled from now on
        self._known = set(covered)
        self._steps_seen = 0
        self._ran = False     # a training forward ran since the last step's end
        self._traced = False  # a hook ran inside torch.compile's trace: removing it would recompile
        self._warned = set()
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            # each owner's own calls (a LightningModule's training_step calls submodules, not forward)
            for m in model.modules():
                pairs = self._candidates(m)
                if pairs:
                    self._owned[id(m)] = pairs
        # and the root's call over the whole tree: a forward that writes a submodule's tensors itself
        # (MoCo's momentum update of the key encoder); a compiled wrapper's hooks run outside the graph
        pairs = [p for m in (inner if inner is not None else model).modules() for p in self._candidates(m)]
        if pairs:
            self._owned[id(model)] = pairs
        for m in (m for m in model.modules() if id(m) in self._owned):
            # first: a hook of the module's own that writes (torch.nn.utils.spectral_norm's power
            # iteration runs in a forward pre-hook registered when the layer was built) comes after it
            self._handles.append(_first_pre_hook(m, Detached(self._before)))
            self._handles.append(m.register_forward_hook(Detached(self._after)))

    def _candidates(self, module):
        """Its buffers, and its parameters nothing trains (MoCo's key encoder, which the forward moves
        by momentum): what a forward may write in place."""
        out = [(module, "_buffers", n) for n, t in module._buffers.items() if _candidate(t) and id(t) not in self._known]
        return out + [(module, "_parameters", n) for n, t in module._parameters.items()
                      if _candidate(t) and not t.requires_grad and id(t) not in self._known]

    def __bool__(self):
        return bool(self._handles)

    def _training(self, module):
        if _tracing.compiling():
            self._traced = True
            return False
        return getattr(module, "_orig_mod", module).training and torch.is_grad_enabled()

    def _before(self, module, args):
        if not self._training(module):
            return
        self._ran = True
        seen = {}
        for m, kind, n in self._owned.get(id(module), ()):
            t = getattr(m, kind).get(n)
            if t is not None and id(t) not in self._known and not t.is_inference():
                copy = t.detach().clone()
                seen[id(t)] = (t, copy)
                self._start.setdefault(id(t), copy)
        self._calls.setdefault(id(module), []).append(seen)

    def _after(self, module, args, output):
        if not self._training(module):
            return
        calls = self._calls.get(id(module))
        seen = calls.pop() if calls else {}
        # a call whose output autograd records is the step's own forward; one that returns nothing
        # for backward (an EMA module called after the update: latent diffusion's LitEma(model)) is
        # the loop's own bookkeeping, whose writes a skip must keep
        feeds_backward = bool(grad_tensors(output))
        for m, kind, n in self._owned.get(id(module), ()):
            t = getattr(m, kind).get(n)
            if t is None or id(t) in self._known or t.is_inference():  # no version counter to read
                continue
            before = seen.get(id(t))
            if before is None:  # rebound during the forward: not put back in place
                self._rebound(m, n)
            # compared with this call's own start: a write the loop makes between two calls (a counter
            # bumped per micro-batch) is not this forward's; by value: MoCo assigns ``param.data``
            elif feeds_backward and not torch.equal(t, before[1]):
                self._known.add(id(t))
                self._found[id(t)] = (t, self._start.get(id(t), before[1]))

    def _rebound(self, module, name):
        key = (type(module).__name__, name)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("trainguard: the forward of %s rebinds its buffer '%s' (a new tensor each step, not an "
                        "in-place write): a skipped step's value cannot be put back there. Write it in place "
                        "(buf.copy_(...), buf[idx] = ...) to have it undone on a skip.", key[0], name)

    def end_step(self):
        """The step was judged: returns [(tensor, value at the step's start)] found in its forwards
        (to be settled from this step on), and stops watching after ``STEPS`` such steps."""
        found, self._found, self._start, self._calls = list(self._found.values()), {}, {}, {}
        if self._ran:
            self._steps_seen += 1
            self._ran = False
        if self._steps_seen >= self.STEPS:
            self.remove()
        return found

    def found_ids(self):
        """ids of the buffers this step's forwards were found writing (settled from its end on)."""
        return set(self._found)

    def discard_step(self):
        """A rollback restored the model: what this step's forwards wrote is gone with it."""
        self._found, self._start, self._calls, self._ran = {}, {}, {}, False

    def remove(self):
        # hooks a compiled graph traced stay (inert: they read nothing there); removing them would
        # make the next call recompile the model
        if not self._traced:
            for h in self._handles:
                h.remove()
        self._handles, self._owned, self._start, self._calls = [], {}, {}, {}


def _first_pre_hook(module, hook):
    try:
        return module.register_forward_pre_hook(hook, prepend=True)
    except TypeError:  # torch < 2.0: no prepend
        return module.register_forward_pre_hook(hook)


def _candidate(t):
    return (t is not None and type(t) in (torch.Tensor, torch.nn.Parameter) and not t.is_sparse and t.device.type != "meta"
            and t.numel() > 0)
