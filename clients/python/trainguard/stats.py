"""Device-side statistics: the global grad norm and per-module forward stats (finite, max |x|).

Everything stays on the device until ``Guard.step`` reads one packed tensor once per step.
"""
import dataclasses

import torch

from .hooks import Detached
from .tensors import foreach_norms


def grad_norms(groups, device):
    """Returns ``(global_norm, [group_norms])`` as 0-d float32 tensors on ``device``.

    NaN and Inf propagate through the norm, so one non-finite gradient makes the global norm
    non-finite: the finite check and the norm are the same pass. Runs on every step before the
    optimizer, so it stays a handful of calls: no per-tensor Python work beyond listing the grads."""
    per_group = []
    for params in groups:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            per_group.append(torch.zeros((), device=device))
            continue
        if any(type(g) is not torch.Tensor for g in grads):
            # DTensor gradients (FSDP2): this rank's shard; the ranks' norms are combined by the caller
            grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        norms = foreach_norms(grads)
        try:
            stacked = torch.stack(norms)
            if stacked.device != device:
                stacked = stacked.to(device)
        except RuntimeError:  # gradients on several devices (model parallel in one process)
            stacked = torch.stack([n.to(device) for n in norms])
        per_group.append(torch.linalg.vector_norm(stacked))
    if len(per_group) == 1:
        return per_group[0], per_group  # one group: its norm is the global norm (two launches fewer)
    total = torch.linalg.vector_norm(torch.stack(per_group)) if per_group else torch.zeros((), device=device)
    return total, per_group


def _first_tensor(out):
    """The first floating-point tensor of a module's output, looked for in tuples, lists, dicts
    (transformers' ModelOutput is one) and dataclasses: what the watch measures for that call. A
    router's integer indices before its weights are passed over."""
    if torch.is_tensor(out):
        return out if out.is_floating_point() else None
    if isinstance(out, dict):
        parts = out.values()
    elif isinstance(out, (tuple, list)):
        parts = out
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        parts = (getattr(out, f.name, None) for f in dataclasses.fields(out))
    else:
        return None
    for o in parts:
        t = _first_tensor(o)
        if t is not None:
            return t
    return None


MEASURE, KEEP, RECOMPUTE = range(3)


class _Tracing:
    """What a hook call is: ``KEEP`` in a plain forward that autograd records, whose output may be
    kept for the batched statistic; ``RECOMPUTE`` a forward run again inside backward (reentrant
    activation checkpointing), whose call the forward already recorded; ``MEASURE`` (in the hook)
    otherwise: traced by ``torch.compile``, without grad, or under saved-tensor hooks (non-reentrant
    checkpointing, CPU offloading), whose point is to not keep what the forward made. A torch
    without the calls that tell (1.13) always measures in the hook."""

    def __init__(self):
        autograd = getattr(torch._C, "_autograd", None)
        self._task = getattr(torch._C, "_current_graph_task_id", None)
        self._saved_hooks = getattr(autograd, "_top_saved_tensors_default_hooks", None)
        # torch >= 2.3; an older one's torch._dynamo is looked up on first use (heavy to import)
        self._compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)

    def compiling(self):
        if self._compiling is None:
            self._compiling = getattr(getattr(torch, "_dynamo", None), "is_compiling", None) or (lambda: False)
        return self._compiling()

    def kind(self, t):
        # compiling() first: under dynamo's trace the torch._C calls after it would break the graph
        if self.compiling() or self._task is None or self._saved_hooks is None:
            return MEASURE
        if self._task() != -1:
            return RECOMPUTE
        return KEEP if t.requires_grad and self._saved_hooks(False) is None else MEASURE


_tracing = _Tracing()


class ModuleWatch:
    """Forward hooks that keep one float32 statistic per module *call* on the device: max |output|,
    whose ``isfinite`` is the finite flag (NaN propagates through the max and Inf is its own
    maximum, so one pass gives both, and no finite output can read as non-finite).

    A module called several times in one step (one Dropout before and after an RNN, a block
    applied in a loop, micro-batches of gradient accumulation) gets one entry per call, in the order
    the calls finished, so the first non-finite entry is the call where NaN appeared and not the
    module's first call. Entries carry the module's name (repeated for repeated calls); after
    ``MAX_CALLS`` calls of one module in a step its later calls fold into its last entry (max), so a
    module applied per time step of a long sequence cannot grow the report without bound.

    **One launch per forward, not one per module.** A reduction launched from each hook costs the
    host 74-108 µs per watched module on an H200 host (autocast casts the output to float32 first),
    and where the forward's launches set the pace (a loop that reads the loss every step, as the HF
    Trainer does) that host time is the step's (``bench/gpu/watch_probe.py``). So in a forward
    autograd records (``_Tracing.kind``), whose outputs are normally saved for backward anyway, a
    hook keeps a detached reference (one nobody saves lives until the forward returns), and one
    ``_foreach_norm`` takes the statistics of all kept outputs when the model's own forward
    returns (a hook on the root module, also called when the forward raises), or at the latest
    when the step takes them.

    A call run again inside backward (activation checkpointing's recompute) is not recorded twice.
    Measured in the hook instead: a module's first call (a probe: if its output is changed in place
    before the forward returns, as ``masked_fill_`` on logits or an in-place ReLU after it do, the
    module is measured in its hook from then on, so the statistic is the module's own output); calls
    ``_Tracing.kind`` says to measure, calls past ``MAX_CALLS``. A batched module whose output is
    changed in place later after all reads 0 for that call (not measured: the value at the forward's
    end is not its output's, and could read non-finite for a healthy one) and is measured in its
    hook from then on."""

    MAX_CALLS = 8

    def __init__(self, model, names, forget_discarded=True):
        self._model = model
        #: whether a forward whose gradients a zero_grad discarded is dropped from the step's calls
        #: (off where an engine sets .grad to None itself between micro-batches: FSDP, DeepSpeed)
        self.forget_discarded = forget_discarded
        modules = dict(model.named_modules())
        self.names = [n for n in names if n in modules]
        self._calls = []                      # [module index, statistic] per call this step, in call order
        self._last = [None] * len(self.names)  # per module: its newest entry in _calls this step
        self._count = [0] * len(self.names)    # per module: calls this step
        self._order = []  # indices in the order the modules first ran, across steps: the forward order
        self._kept = []    # (entry, detached output, its version): the statistic is taken in settle()
        self._probes = []  # (module index, detached output, its version) of first calls measured in the hook
        self._batched = set()  # modules whose output stayed as it was until the forward returned
        self._in_hook = set()  # modules whose output is changed in place after their hook
        self.enabled = True
        self._outside = False  # the model's forward runs without grad (an evaluation): not this step's
        self._depth = 0        # root forwards under way (a model may call itself)
        self._forward = 0      # the root forward under way (each entry in _calls carries it)
        self._backed = set()   # root forwards of this step that a backward went through
        self._unit = 0         # the loop's unit of work under way (begin_unit); 0: none
        self._sentinel = None  # a small parameter whose .grad tells whether the gradients were reset
        self._sentinel_picked = False
        self._after_backward = None  # (calls then, id and version of the sentinel's grad) when a backward ended
        self._queued_task = None     # the backward whose end is already waited for
        self._handles = []
        self.attach()

    def attach(self):
        """(Re-)registers the forward hooks; a no-op while they are registered."""
        if self._handles:
            return
        modules = dict(self._model.named_modules())
        for i, n in enumerate(self.names):
            self._handles.append(modules[n].register_forward_hook(Detached(self._make_hook(i))))
        def enter(*_):
            self.settle()  # what a failed forward left
            if not _tracing.compiling():
                # A forward of the whole model without grad (an evaluation, sampling, a rollout between
                # steps) cannot reach this step's gradients: its calls are not recorded, so a NaN in one
                # validation batch does not skip the next healthy training step. The outermost call
                # of the model decides (a model that calls itself runs nested root calls).
                if self._depth == 0:
                    self._outside = not torch.is_grad_enabled()
                    self._forward += 1
                    if not self._outside and self._after_backward is not None:
                        try:
                            self._forget_discarded()
                        except Exception:  # a gradient this cannot read (DTensor, sparse): the calls stay
                            self._after_backward = None
                self._depth += 1

        def leave(module, args, output=None):
            self.settle()
            if not _tracing.compiling():
                self._depth = max(0, self._depth - 1)
                if self._depth == 0:
                    if not self._outside:
                        self._on_backward(self._forward, output)
                    self._outside = False
        self._handles.append(self._model.register_forward_pre_hook(Detached(enter)))
        try:
            self._handles.append(self._model.register_forward_hook(Detached(leave), always_call=True))
        except TypeError:  # torch < 2.1: not called when the forward raises (the pre-hook settles then)
            self._handles.append(self._model.register_forward_hook(Detached(leave)))

    def _make_hook(self, i):
        def hook(module, inputs, output):
            if not self.enabled or self._outside:
                return
            t = _first_tensor(output)
            if t is None or not t.is_floating_point() or t.numel() == 0:
                return
            kind = _tracing.kind(t)
            if kind == RECOMPUTE:
                return
            if i not in self._order:
                self._order.append(i)
            self._count[i] += 1
            if self._count[i] > self.MAX_CALLS:
                entry, m = self._calls[self._last[i]], _max_abs(t)
                entry[1] = m if entry[1] is None else torch.maximum(entry[1], m)
                return
            entry = [i, None, self._forward if self._depth else self._unit]  # outside the model's forward: the unit's
            self._last[i] = len(self._calls)
            self._calls.append(entry)
            keep = kind == KEEP and i not in self._in_hook
            if keep and i in self._batched:
                self._kept.append((entry, t.detach(), t._version))
                return
            entry[1] = _max_abs(t)
            if keep:
                self._probes.append((i, t.detach(), t._version))
        return hook

    def begin_unit(self):
        """A unit of the loop's work begins (Lightning: a training batch). Calls made outside the
        model's own forward (a ``training_step`` that calls ``self.net(x)``) carry its number, so a
        unit no backward followed (a batch the loop dropped) is not charged to the step (take_list)."""
        self._forward += 1
        self._unit = self._forward

    def unit_backed(self):
        """A backward runs for the unit under way."""
        if self._unit:
            self._backed.add(self._unit)

    def _on_backward(self, forward, output):
        """Marks ``forward`` once a backward goes through its output: a loop that drops a batch itself
        (``if not torch.isfinite(loss): continue``) runs a forward no backward follows, whose calls
        must not be charged to the next step (take_list)."""
        for t in grad_tensors(output):
            t.register_hook(lambda grad, f=forward: self._backed_through(f))

    def _backed_through(self, forward):
        self._backed.add(forward)
        if not self.forget_discarded:
            return
        task = _tracing._task() if _tracing._task is not None else None
        if task is None or task != self._queued_task:  # once per backward
            self._queued_task = task
            try:
                torch.autograd.Variable._execution_engine.queue_callback(self._backward_ended)
            except RuntimeError:  # not inside the engine's own backward (compiled autograd): not judged
                self._queued_task = None

    def _backward_ended(self):
        """Notes what the gradients look like once a backward has accumulated them: ids and version
        counters only (a reference to the grad would make autograd accumulate out of place)."""
        if not self._sentinel_picked:
            # picked once a backward has left a gradient (not after torch.autograd.grad, a frozen model)
            self._sentinel = _smallest_with_grad(self._model)
            self._sentinel_picked = self._sentinel is not None
        g = self._sentinel.grad if self._sentinel is not None else None
        self._after_backward = None if g is None else (len(self._calls), id(g), g._version)

    def _forget_discarded(self):
        """A forward of the model begins after a backward ended and before this step was taken.
        Where the gradients were reset since (``zero_grad()``), that backward fed no gradient the step
        will judge: a GAN's generator pass through D after D's step, whose gradients D's next
        ``zero_grad`` discards. Its calls are not the next step's. ``set_to_none=True`` (torch's
        default) reads as a sentinel's grad gone, dropped here; ``set_to_none=False`` as its grad
        changed in place, which a clip between micro-batches of accumulation also does: those calls
        read 0 where the sentinel's grad reads all zero, decided on the device (no host read)."""
        n, ident, version = self._after_backward
        self._after_backward = None
        g = self._sentinel.grad
        if g is None:
            self._drop_calls(n)
        elif id(g) == ident and g._version != version:
            self._zero_calls_if(n, torch.logical_not(g.detach().ne(0).any()))

    def _drop_calls(self, n):
        self._calls = self._calls[n:]
        self._last, self._count = [None] * len(self.names), [0] * len(self.names)
        for k, entry in enumerate(self._calls):
            self._last[entry[0]] = k
            self._count[entry[0]] += 1

    def _zero_calls_if(self, n, zeroed):
        entries = [e for e in self._calls[:n] if e[1] is not None]
        if not entries:
            return
        try:
            stats = torch.stack([e[1] for e in entries])
        except RuntimeError:  # statistics on several devices (model parallel in one process)
            for e in entries:
                e[1] = torch.where(zeroed.to(e[1].device), torch.zeros_like(e[1]), e[1])
            return
        stats = torch.where(zeroed.to(stats.device), torch.zeros_like(stats), stats)
        for e, v in zip(entries, stats.unbind()):
            e[1] = v

    def settle(self):
        """Takes the statistics of the kept outputs: one ``_foreach_norm`` per device and dtype."""
        if _tracing.compiling():
            return
        probes, self._probes = self._probes, []
        moved = {i for i, t, version in probes if t._version != version}
        self._in_hook |= moved
        self._batched |= {i for i, _, _ in probes} - self._in_hook
        kept = self._kept
        if not kept:
            return
        values = foreach_norms([t for _, t, _ in kept], float("inf"))  # detached: nothing recorded
        self._kept = self._kept[len(kept):]  # computed first: a failure leaves them kept, none unmeasured
        for (entry, t, version), v in zip(kept, values):
            if t._version != version:  # changed in place after its hook: this is not its output's value
                v = torch.zeros_like(v)
                self._batched.discard(entry[0])
                self._in_hook.add(entry[0])
            entry[1] = v if entry[1] is None else torch.maximum(entry[1], v)  # later calls folded in

    def forward_order(self):
        seen = list(self._order)
        return [self.names[i] for i in seen] + [n for j, n in enumerate(self.names) if j not in seen]

    def take_list(self, device):
        """The names of this step's module calls in call order (a module called twice appears twice)
        and their statistics as 0-d float32 tensors, unstacked: the caller concatenates them with the
        rest of the step's statistics in one kernel."""
        self.settle()
        calls, backed = self._calls, self._backed
        self.reset()
        if backed:  # a forward no backward went through was abandoned by the loop: not this step's
            calls = [c for c in calls if c[2] in backed or c[2] == 0]
        return ([self.names[i] for i, _, _ in calls], [m if m.device == device else m.to(device) for _, m, _ in calls])

    def reset(self):
        self._depth, self._outside = 0, False  # what a forward that raised left (torch < 2.1: no leave)
        self._calls = []
        self._backed = set()
        self._after_backward = None  # the step is taken: what its backwards fed is judged
        self._kept = []
        self._probes = []
        self._last = [None] * len(self.names)
        self._count = [0] * len(self.names)

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def _smallest_with_grad(model):
    """The smallest parameter that has a gradient (a bias, a norm's weight): the cheapest to look at."""
    with_grad = [p for p in model.parameters() if p.grad is not None]
    return min(with_grad, key=lambda p: p.numel()) if with_grad else None


def grad_tensors(output):
    """The tensors of a forward's output (one level into a tuple, list or dict) that autograd records."""
    if torch.is_tensor(output):
        values = [output]
    elif isinstance(output, dict):
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = [getattr(output, k, None) for k in ("loss", "logits")]  # a ModelOutput-like object
    return [t for t in values if torch.is_tensor(t) and t.requires_grad]


def _max_abs(t):
    """max |t| as a 0-d float32 tensor, one reduction, no |t| temporary; NaN and Inf propagate. A
    float64 output (``model.double()``) is reduced in float64, which torch will not narrow inside the
    norm, then converted (a value beyond float32's range reads inf: the safe side)."""
    if t.dtype == torch.float64:
        return torch.linalg.vector_norm(t.detach(), float("inf")).float()
    return torch.linalg.vector_norm(t.detach(), float("inf"), dtype=torch.float32)


def first_non_finite(names, finite):
    """Names the first non-finite module call: "'rnn'", or for a module that ran several times
    "'drop' (call 2 of 2 this step)"; "" when all are finite."""
    for pos, (name, ok) in enumerate(zip(names, finite)):
        if not ok:
            total = sum(1 for n in names if n == name)
            if total == 1:
                return f"'{name}'"
            k = sum(1 for n in names[:pos + 1] if n == name)
            return f"'{name}' (call {k} of {total} this step)"
    return ""
