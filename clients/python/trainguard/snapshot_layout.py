"""What a snapshot copies: the training state's tensors, found by walking its state dicts, and the
skeleton that puts them back (:mod:`trainguard.snapshot` takes and restores them).

The walk runs at every take, since the skeleton holds values that change (the learning rate); the
per-tensor work after it (deduplicating tied weights, finding each tensor's device, sizing the
state) is kept in a :class:`StateLayout` while the state dicts hold the very same tensors over the
very same memory, which is checked at every take without a Python loop over the tensors.
"""
import copy
import itertools
import operator
import weakref

import torch

from .snapshot_staging import placement

_SHAPE = operator.attrgetter("shape")
_DTYPE = operator.attrgetter("dtype")
# one C++ loop over the tensors' addresses (torch >= 2.1; older ones lay the state out at every take)
_ADDRESSES_EQUAL = getattr(torch._C, "_tensors_data_ptrs_at_indices_equal", None)
REUSES_LAYOUTS = _ADDRESSES_EQUAL is not None
_SERIALS = itertools.count()


class Ref:
    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i


class Flat:
    """A dict whose values are all tensors, walked as one run of indices (``start`` on): a model's
    state dict, one parameter's optimizer state. One object instead of a Ref per tensor, and no
    Python call per tensor: the walk runs at every take."""
    __slots__ = ("keys", "start")

    def __init__(self, keys, start):
        self.keys, self.start = keys, start


def _all_tensors(values):
    """Whether every value is a tensor: one C loop for their types, then a check per distinct type."""
    return bool(values) and all(issubclass(t, torch.Tensor) for t in set(map(type, values)))


def walk(obj, tensors):
    """Replaces every tensor in a nested dict/list with a placeholder index into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return Ref(len(tensors) - 1)
    if isinstance(obj, dict):
        values = list(obj.values())
        if _all_tensors(values):
            start = len(tensors)
            tensors.extend(values)
            return Flat(list(obj), start)
        return {k: walk(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [walk(v, tensors) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    return obj


def fill(obj, at):
    """``obj`` with every placeholder replaced by ``at(index)``: only the tensors it refers to are fetched."""
    if isinstance(obj, Ref):
        return at(obj.i)
    if isinstance(obj, Flat):
        return dict(zip(obj.keys, map(at, range(obj.start, obj.start + len(obj.keys)))))
    if isinstance(obj, dict):
        return {k: fill(v, at) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [fill(v, at) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    return obj


def is_dtensor(t):
    return hasattr(t, "to_local") and hasattr(t, "placements") and hasattr(t, "device_mesh")


def local(t):
    """(plain tensor, spec): a DTensor's (FSDP2, tensor parallel) local shard and what rebuilds the
    DTensor around it; a plain tensor and None otherwise. Snapshots hold local shards only: every
    rank keeps its own part of the state, as it keeps its own part of the parameters."""
    if is_dtensor(t):
        shard = t.to_local()
        return shard, (t.device_mesh, tuple(t.placements), t.shape, tuple(t.stride()), shard.device)
    return t, None


def rebuild(host, spec):
    """A fresh live tensor from a snapshot buffer: a copy on the shard's device, wrapped back into
    a DTensor when it was one (the snapshot's own buffer stays intact for a later rollback)."""
    if spec is None:
        return host.clone()
    mesh, placements, shape, stride, device = spec
    from torch.distributed.tensor import DTensor
    return DTensor.from_local(host.to(device, copy=True), mesh, placements, run_check=False, shape=shape,
                              stride=stride)


class StateLayout:
    """How the state's tensors lie, as a take found them: ``first`` (the walked index of each unique
    storage: tied weights are copied once), ``remap`` (each walked tensor's index among the unique
    ones), their DTensor ``specs``, ``nbytes``, whether each unique one lives on ``device``
    (``placement``) and their indices there (``here``) or elsewhere (``elsewhere``: a non-fused
    optimizer's CPU step counts). ``serial`` tells layouts apart (a slot's buffers remember the one
    they were laid out for). ``memo`` keeps what the store derives from it (its staging). It holds
    the tensors only weakly: a state that was replaced (a checkpoint loaded) is not kept alive by it."""

    @classmethod
    def build(cls, raw, device):
        """(layout, the unique tensors) of a walk's tensors ``raw``."""
        self = cls()
        uniq, self.specs, self.remap, self.first, index = [], [], [], [], {}
        for j, t in enumerate(raw):
            t, spec = local(t.detach())
            key = (t.data_ptr(), t.dtype, tuple(t.shape), t.device) if t.numel() else None
            if key is not None and key in index:
                self.remap.append(index[key])
                continue
            if key is not None:
                index[key] = len(uniq)
            self.remap.append(len(uniq))
            self.first.append(j)
            uniq.append(t)
            self.specs.append(spec)
        self.nbytes = sum(t.numel() * t.element_size() for t in uniq)
        self.placement = placement(uniq, device)
        self.here = [i for i, on in enumerate(self.placement) if on]
        self.elsewhere = [i for i, on in enumerate(self.placement) if not on]
        self.serial = next(_SERIALS)
        self.memo = {}
        # A DTensor's shard may be swapped under the same object: such a state is laid out afresh
        # at every take, as is every state on a torch without the one-call address check.
        checkable = _ADDRESSES_EQUAL is not None and all(spec is None for spec in self.specs)
        self._refs = [weakref.ref(t) for t in raw] if checkable else None
        self._addresses = [t.data_ptr() for t in raw] if checkable else None
        self._indices = list(range(len(raw)))
        self._shapes = list(map(_SHAPE, raw))
        self._dtypes = list(map(_DTYPE, raw))
        return self, uniq

    def holds(self, raw):
        """Whether ``raw`` (a new walk's tensors) are the very tensors this layout was made of, over
        the same memory with the same shapes and dtypes (``p.data = ...`` moves, reshapes or
        reinterprets a parameter without making a new one)."""
        if self._refs is None or len(raw) != len(self._refs):
            return False
        if not all(map(operator.is_, raw, [r() for r in self._refs])):
            return False
        try:
            same_memory = _ADDRESSES_EQUAL(raw, self._addresses, self._indices)
        except (RuntimeError, TypeError):  # a private torch function: if it ever changes, lay out afresh
            return False
        return same_memory and list(map(_SHAPE, raw)) == self._shapes and list(map(_DTYPE, raw)) == self._dtypes

    def unique(self, raw):
        """The unique tensors of ``raw``, which this layout ``holds``: the live tensors themselves (a
        detached view of each cost a take ~0.6 ms for GPT-2 small's 592; every use of them copies
        or reduces without grad)."""
        return list(map(raw.__getitem__, self.first))


def gather(model, optimizer, scheduler, scaler, device, last=None):
    """(layout, unique tensors, skeleton) of the live state, with ``last`` (the previous take's
    layout) again where it still holds the state's tensors. ``keep_vars``: the parameters
    themselves, the same objects at every take (their detached copies would be new ones)."""
    tensors = []
    live = model.state_dict(keep_vars=True)
    model_sd = walk(live, tensors)
    if isinstance(model_sd, dict):  # a module's extra state (Python values): as they are now, not as they become
        model_sd = {k: v if isinstance(v, (Ref, Flat)) else copy.deepcopy(v) for k, v in model_sd.items()}
    outside = walk(outside_params(model, optimizer, live), tensors)
    opt_sd = walk(optimizer.state_dict(), tensors)  # references, not copies
    sched = walk(scheduler.state_dict(), tensors) if scheduler is not None else None
    scaled = None
    if scaler is not None and scaler.is_enabled() and getattr(scaler, "_scale", None) is not None:
        # Tensors directly: scaler.state_dict() reads the scale with .item(), a device sync.
        scaled = walk({"scale": scaler._scale, "growth_tracker": scaler._growth_tracker}, tensors)
    if last is not None and last.holds(tensors):
        layout, uniq = last, last.unique(tensors)
    else:
        layout, uniq = StateLayout.build(tensors, device)
    skeleton = {"model": model_sd, "outside": outside, "optimizer": opt_sd, "scheduler": sched, "scaler": scaled,
                "specs": layout.specs}
    return layout, uniq, skeleton


def outside_params(model, optimizer, model_sd=None):
    """The parameters the optimizer updates that are not the model's (learned loss weights, a
    temperature kept beside the model): a snapshot holds them too, or a rollback restores their
    optimizer state and leaves them at their later values. ``model_sd``: the model's
    ``state_dict(keep_vars=True)``, when the caller has it: while every optimized parameter is
    among its values (the usual case) there is none, found without walking ``model.parameters()``."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if model_sd is not None:
        held = set(map(id, model_sd.values()))
        if all(id(p) in held for p in params):
            return []
    own = set(map(id, model.parameters()))
    return [p for p in params if id(p) not in own]
