"""Device-side statistics: the global grad norm and per-module forward stats (finite, max |x|).

Everything stays on the device until ``Guard.step`` reads one packed tensor once per step.
"""
import torch

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
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, dict):
        for o in out.values():
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _compiling_check():
    """torch's "is dynamo tracing this call" test, or one that always says no (torch 1.13)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling
    dynamo = getattr(torch, "_dynamo", None)
    return getattr(dynamo, "is_compiling", None) or (lambda: False)


_is_compiling = _compiling_check()


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
    host ~50 µs per watched module on an H200 host (autocast casts the output to float32 first), and
    where the forward's launches set the pace (a loop that reads the loss every step, as the HF
    Trainer does) that host time is the step's (``bench/gpu/watch_probe.py``). So, while autograd
    records (training), a hook only keeps its output; the statistics of all kept outputs are taken
    in one ``_foreach_norm`` when the model's own forward returns (a hook on the root module), or
    at the latest when the step takes them. Those outputs are normally kept by autograd for backward
    anyway. A call traced by ``torch.compile``, one without grad (an evaluation loop: nothing would
    keep them) and one past ``MAX_CALLS`` are measured in the hook. A module whose output is changed
    in place after its hook (the tensor's version moved before the statistic was taken) is measured
    in its hook from then on."""

    MAX_CALLS = 8

    def __init__(self, model, names):
        self._model = model
        modules = dict(model.named_modules())
        self.names = [n for n in names if n in modules]
        self._calls = []                      # [module index, statistic] per call this step, in call order
        self._last = [None] * len(self.names)  # per module: its newest entry in _calls this step
        self._count = [0] * len(self.names)    # per module: calls this step
        self._order = []  # indices in the order the modules first ran, across steps: the forward order
        self._kept = []   # (entry, output, its version) whose statistic is still to be taken (settle)
        self._in_hook = set()  # modules measured in their hook: their output is changed in place later
        self.enabled = True
        self._handles = []
        self.attach()

    def attach(self):
        """(Re-)registers the forward hooks; a no-op while they are registered."""
        if self._handles:
            return
        modules = dict(self._model.named_modules())
        for i, n in enumerate(self.names):
            self._handles.append(modules[n].register_forward_hook(self._make_hook(i)))
        self._handles.append(self._model.register_forward_hook(lambda *_: self.settle()))

    def _make_hook(self, i):
        def hook(module, inputs, output):
            if not self.enabled:
                return
            t = _first_tensor(output)
            if t is None or not t.is_floating_point() or t.numel() == 0:
                return
            if i not in self._order:
                self._order.append(i)
            self._count[i] += 1
            if self._count[i] > self.MAX_CALLS:
                entry, m = self._calls[self._last[i]], _max_abs(t)
                entry[1] = m if entry[1] is None else torch.maximum(entry[1], m)
                return
            entry = [i, None]
            self._last[i] = len(self._calls)
            self._calls.append(entry)
            if t.requires_grad and i not in self._in_hook and not _is_compiling():
                self._kept.append((entry, t, t._version))
            else:
                entry[1] = _max_abs(t)
        return hook

    def settle(self):
        """Takes the statistics of the kept outputs: one ``_foreach_norm`` per device and dtype."""
        if _is_compiling() or not self._kept:
            return
        kept, self._kept = self._kept, []
        with torch.no_grad():
            values = foreach_norms([t for _, t, _ in kept], float("inf"))
        for (entry, t, version), v in zip(kept, values):
            entry[1] = v if entry[1] is None else torch.maximum(entry[1], v)  # later calls folded in
            if t._version != version:  # written in place after its hook: this value may be a later one
                self._in_hook.add(entry[0])

    def forward_order(self):
        seen = list(self._order)
        return [self.names[i] for i in seen] + [n for j, n in enumerate(self.names) if j not in seen]

    def take_list(self, device):
        """The names of this step's module calls in call order (a module called twice appears twice)
        and their statistics as 0-d float32 tensors, unstacked: the caller concatenates them with the
        rest of the step's statistics in one kernel."""
        self.settle()
        calls = self._calls
        self.reset()
        return ([self.names[i] for i, _ in calls], [m if m.device == device else m.to(device) for _, m in calls])

    def reset(self):
        self._calls = []
        self._kept = []
        self._last = [None] * len(self.names)
        self._count = [0] * len(self.names)

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles = []


def _max_abs(t):
    """max |t| as a 0-d float32 tensor, one reduction, no |t| temporary; NaN and Inf propagate."""
    with torch.no_grad():
        return torch.linalg.vector_norm(t, float("inf"), dtype=torch.float32)


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


# The attribute under which a framework's wrapper holds the model it wraps, as its only child:
# DistributedDataParallel's ``module``, torch.compile's ``_orig_mod``, FSDP1's ``_fsdp_wrapped_module``.
WRAPPED = ("module", "_orig_mod", "_fsdp_wrapped_module")


def auto_watch(model):
    """Default watched modules: the model's children, with containers (ModuleList/Sequential/
    ModuleDict) opened one level so that each block is watched on its own. A framework's wrapper
    (one child, named as in ``WRAPPED``) is looked through: its child is the whole model, whose
    output alone would say nothing about where a NaN appeared. A module whose one child has any other
    name is not (the user names its blocks), nor a wrapped model without children (it is watched)."""
    prefix = ""
    kids = list(model.named_children())
    while len(kids) == 1 and kids[0][0] in WRAPPED and any(True for _ in kids[0][1].children()):
        prefix += kids[0][0] + "."
        kids = list(kids[0][1].named_children())
    names = []
    containers = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)
    for name, child in kids:
        if isinstance(child, containers):
            names.extend(f"{prefix}{name}.{sub}" for sub, _ in child.named_children())
        else:
            names.append(prefix + name)
    return names
