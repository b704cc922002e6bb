"""Validation audit: a snapshot of everything validation must leave as it found it, a diff, and an undo.

Covers the Hallo failure class: a pipeline that re-patches a module's ``forward`` (no parameter
changes, so a checksum alone sees nothing), flips train/eval mode, casts or moves weights, adds
hooks, or reseeds the global RNG on one rank; and every module's plain attribute state (``__dict__``
minus parameters, buffers, children and hooks): a swapped attention processor
(diffusers' ``set_attn_processor``), ``module.scale = ...``, a flag, a replaced callable, a small
container or plain object changed in place, and class attributes patched on the model's classes.
Identity is compared for every value, the value itself for small ones. When one mechanism explains
many changes it is named once ("every parameter went through float16 and back")."""
import sys

import torch

from .remembered import Remembered, dict_changes, short
from .rng import capture_rng, only_drawn_from, restore_rng


# Everything nn.Module keeps in an instance's __dict__ for itself (parameters, buffers, children,
# hooks, ...): read from a fresh Module, so it follows the installed torch version. Audited
# separately (tensors, tree, hooks, train mode) or not at all (hook bookkeeping).
_MODULE_INTERNALS = frozenset(torch.nn.Module().__dict__) | {"forward"}
def _tensors_only(v, own):
    """A tensor that is not the model's, or a list/tuple/dict of such tensors (and Nones)."""
    if torch.is_tensor(v):
        return id(v) not in own and not isinstance(v, torch.nn.Parameter)
    items = v.values() if isinstance(v, dict) else v if isinstance(v, (list, tuple)) else None
    return items is not None and all(x is None or _tensors_only(x, own) for x in items)


def _stash_pair(before, after, own):
    """Whether an attribute went between tensor stashes (None on one side at most)."""
    if before is None and after is None:
        return False
    return all(x is None or _tensors_only(x, own) for x in (before, after))


def _attributes(m, own, ignore=frozenset()):
    return {k: Remembered(v, 0, own) for k, v in m.__dict__.items() if k not in _MODULE_INTERNALS and k not in ignore}


def _is_metric(m):
    """A torchmetrics ``Metric`` or ``MetricCollection`` (a user's subclass too): its plain attributes
    (running sums, ``_update_count``, caches) are bookkeeping a validation is there to change. Decided
    from the class hierarchy; torchmetrics is not imported for it."""
    if "torchmetrics" not in sys.modules:  # no module can be a metric before torchmetrics is imported
        return False
    return any(c.__module__.startswith("torchmetrics.") and c.__name__ in ("Metric", "MetricCollection")
               for c in type(m).__mro__)


def _class_attributes(cls):
    return {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__", "__doc__")}


# Precisions a value may have been cast through and back ("model.half(); model.float()" during validation).
_ROUND_TRIPS = [torch.float16, torch.bfloat16]


def _round_trip(saved, cur):
    """The dtype ``saved`` went through to become ``cur`` (values only), or None."""
    if not saved.is_floating_point() or saved.dtype in _ROUND_TRIPS:
        return None
    for dt in _ROUND_TRIPS:
        if torch.equal(saved.to(dt).to(saved.dtype), cur):
            return dt
    return None


class ModelSnapshot:
    """``keep_values``: True keeps a copy of every tensor (restorable), False a checksum (reads every
    tensor once, restores none), None only each tensor's version counter (no read at all; sees
    in-place writes, not ``.data`` swaps of equal dtype and device)."""

    def __init__(self, model, keep_values=True, ignore_hooks=(), ignore_attrs=()):
        self.model = model
        self.ignore_hooks = set(ignore_hooks)
        # a framework's own bookkeeping in module __dict__s (Lightning's _current_fx_name), which
        # the framework itself changes around every validation pass: neither compared nor restored
        self.ignore_attrs = frozenset(ignore_attrs)
        self.tensors = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            self.tensors[name] = (t, t.dtype, t.device, t.detach().clone() if keep_values else None,
                                  float(t.detach().double().sum()) if keep_values is False else None, t._version)
        own = self.own = {id(t) for t, *_ in self.tensors.values()}
        # a pass that freezes parameters (an inference helper's requires_grad_(False)) leaves them out
        # of every later update, silently
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self.modules = {}
        self.classes = {}
        for name, m in model.named_modules():
            metric = _is_metric(m)
            self.modules[name] = {
                "module": m, "training": m.training, "cls": type(m),
                "cls_forward": type(m).__dict__.get("forward", None) or type(m).forward,
                "inst_forward": m.__dict__.get("forward", None),
                "fwd_hooks": {k: v for k, v in m._forward_hooks.items() if k not in self.ignore_hooks},
                "pre_hooks": dict(m._forward_pre_hooks),
                # a metric's attributes are its state, updated by every validation step: neither
                # compared nor restored. Its parameters, buffers, children, hooks and mode still are.
                "metric": metric,
                "attrs": {} if metric else _attributes(m, own, self.ignore_attrs),
            }
            for cls in type(m).__mro__:
                if cls is not object and cls not in self.classes:
                    self.classes[cls] = _class_attributes(cls)
        self.rng = capture_rng()

    # What kind of change a finding is; the order is the order details are listed in (most
    # telling first), since only the first few reach the sidecar and the log. Attribute changes
    # (a swapped attention processor, a flag, a scale) change behaviour: they count as wiring.
    # STASH: an attribute holding only tensors that are not the model's (an EMA's ``store()`` keeping
    # the weights aside while validation runs on the average: latent diffusion's LitEma.collected_params)
    # is data the forward keeps, not behaviour: listed, not counted.
    WIRING, ATTRIBUTES, RNG, VALUES, PLACEMENT, TRAIN_MODE, STASH = range(7)

    def diff(self):
        """Returns (parameters_changed, dtype_device_mode_changed, wiring_changed, rng_changed, details)."""
        found = []  # (kind, text)
        now = dict(list(self.model.named_parameters()) + list(self.model.named_buffers()))
        changed_values, placement = [], []
        for name, (t, dtype, device, value, checksum, version) in self.tensors.items():
            cur = now.get(name)
            if cur is None:
                found.append((self.WIRING, f"{name} removed"))
            elif cur.dtype != dtype or cur.device != device:
                placement.append((name, f"{dtype}/{device} -> {cur.dtype}/{cur.device}"))
            elif not (torch.equal(cur.detach(), value) if value is not None else
                      float(cur.detach().double().sum()) == checksum if checksum is not None else
                      cur is t and cur._version == version):
                changed_values.append((name, value, cur))
        found += self._explain_values(changed_values)
        found += self._explain_grouped(self.PLACEMENT, placement, "tensors moved or cast")
        mods = dict(self.model.named_modules())
        train_mode = []
        for name, s in self.modules.items():
            m = mods.get(name)
            label = name or "<root>"
            if m is not s["module"]:
                found.append((self.WIRING, f"{label} replaced or removed"))
                continue
            if m.training != s["training"]:
                train_mode.append((label, f"train mode {s['training']} -> {m.training}"))
            if m.__dict__.get("forward", None) is not s["inst_forward"]:
                found.append((self.WIRING, f"{label}.forward replaced"))
            if type(m) is not s["cls"] or type(m).forward is not s["cls_forward"]:
                found.append((self.WIRING, f"{label}: class forward patched"))
            hooks = {k: v for k, v in m._forward_hooks.items() if k not in self.ignore_hooks}
            if hooks != s["fwd_hooks"] or dict(m._forward_pre_hooks) != s["pre_hooks"]:
                found.append((self.WIRING, f"{label} forward hooks changed"))
            if s["metric"]:
                continue
            attrs, stashes = [], []
            current = {k: v for k, v in m.__dict__.items() if k not in _MODULE_INTERNALS and k not in self.ignore_attrs}
            before = s["attrs"]
            stashed = {k for k in set(before) | set(current)
                       if _stash_pair(before[k].obj if k in before else None, current.get(k), self.own)}
            dict_changes({k: r for k, r in before.items() if k not in stashed},
                         {k: v for k, v in current.items() if k not in stashed}, label, attrs, ".{}")
            dict_changes({k: r for k, r in before.items() if k in stashed},
                         {k: v for k, v in current.items() if k in stashed}, label, stashes, ".{}")
            found += [(self.ATTRIBUTES, text) for text in attrs]
            found += [(self.STASH, f"{text} (tensors kept aside, not counted)") for text in stashes]
        found += self._explain_grouped(self.TRAIN_MODE, train_mode, "modules changed")
        frozen = [(name, f"requires_grad {was} -> {not was}") for name, was in self.requires_grad.items()
                  if name in now and now[name].requires_grad != was]
        found += self._explain_grouped(self.TRAIN_MODE, frozen, "parameters changed")
        for cls, before in self.classes.items():
            after = _class_attributes(cls)
            for k, v in before.items():
                if k not in after or after[k] is not v:
                    if k == "forward":
                        continue  # reported per module above
                    found.append((self.WIRING, f"class {cls.__qualname__}.{k} "
                                               f"{'removed' if k not in after else 'replaced (' + short(v) + ' -> ' + short(after[k]) + ')'}"))
            found += [(self.WIRING, f"class {cls.__qualname__}.{k} added") for k in after if k not in before]
        for names, before in ((now, self.tensors), (mods, self.modules)):
            found += [(self.WIRING, f"{name} added") for name in names if name not in before]
        # Draws are what the run does unguarded too (a DataLoader takes its base seed from the global
        # RNG): only a reseed, or a state set from elsewhere, is a change, and only it is undone.
        if not only_drawn_from(self.rng, capture_rng()):
            found.append((self.RNG, "global RNG reseeded or set (not only drawn from)"))
        found.sort(key=lambda f: f[0])  # stable: within a kind, discovery order
        kinds = {k for k, _ in found}
        return (self.VALUES in kinds, bool(kinds & {self.PLACEMENT, self.TRAIN_MODE}),
                bool(kinds & {self.WIRING, self.ATTRIBUTES}), self.RNG in kinds, [text for _, text in found])

    def _explain_values(self, changed):
        """Names the mechanism when one explains the changed tensors: all went through fp16/bf16
        and back (a ``model.half()`` ... ``model.float()`` during validation) or all changed."""
        if not changed:
            return []
        total = len(self.tensors)
        trips = {}
        for name, saved, cur in changed:
            dt = _round_trip(saved, cur) if saved is not None else None
            trips.setdefault(dt, []).append(name)
        out = []
        for dt, names in trips.items():
            if dt is not None and len(names) > 1:
                every = "every parameter and buffer" if len(names) == total else f"{len(names)} of {total} tensors"
                out.append((self.VALUES, f"{every} went through {str(dt).replace('torch.', '')} and back "
                                         f"(precision lost, e.g. model.half() then model.float()): {_names(names)}"))
            elif len(names) > 3 and len(names) == total:
                out.append((self.VALUES, f"every parameter and buffer changed value ({total}: an optimizer step, "
                                         f"load_state_dict or in-place update during validation?)"))
            else:
                out += [(self.VALUES, f"{n} values changed") for n in names]
        return out

    def _explain_grouped(self, kind, items, what):
        """One line for many identical changes ("32 tensors float32/cpu -> float16/cpu")."""
        groups = {}
        for name, change in items:
            groups.setdefault(change, []).append(name)
        out = []
        for change, names in groups.items():
            if len(names) > 3:
                out.append((kind, f"{len(names)} {what}: {change} ({_names(names)})"))
            else:
                out += [(kind, f"{n} {change}") for n in names]
        return out

    def restore(self):
        """Undoes every change diff() can see. Parameter objects keep their identity, so the
        optimizer's references stay valid."""
        now = dict(list(self.model.named_parameters()) + list(self.model.named_buffers()))
        with torch.no_grad():
            for name, (t, dtype, device, value, *_) in self.tensors.items():
                cur = now.get(name, t)
                if value is None:  # no copy kept: put dtype and device back at least
                    if cur.dtype != dtype or cur.device != device:
                        cur.data = cur.data.to(device=device, dtype=dtype)
                    continue
                if cur.dtype != dtype or cur.device != device:
                    cur.data = value.clone()
                elif not torch.equal(cur, value):
                    cur.copy_(value)
                if cur is not t:  # the tensor object itself was swapped: put the original back
                    t.data = value.clone()
        for name, was in self.requires_grad.items():
            if name in now and now[name].requires_grad != was:
                now[name].requires_grad_(was)
        for cls, before in self.classes.items():
            after = _class_attributes(cls)
            for k in [k for k in after if k not in before]:
                delattr(cls, k)
            for k, v in before.items():
                if after.get(k, _MISSING) is not v:
                    setattr(cls, k, v)
        for name, s in self.modules.items():
            m = s["module"]
            m.training = s["training"]
            if type(m) is not s["cls"]:
                m.__class__ = s["cls"]
            if type(m).forward is not s["cls_forward"]:
                setattr(s["cls"], "forward", s["cls_forward"])
            if s["inst_forward"] is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = s["inst_forward"]
            for k in [k for k in m.__dict__ if k not in _MODULE_INTERNALS and k not in s["attrs"]
                      and k not in self.ignore_attrs and not s["metric"]]:
                del m.__dict__[k]
            for k, r in s["attrs"].items():
                m.__dict__[k] = r.obj  # plain attributes live in __dict__; no nn.Module __setattr__ routing
                r.restore_inside()
            ours = {k: v for k, v in m._forward_hooks.items() if k in self.ignore_hooks}
            m._forward_hooks.clear()
            m._forward_hooks.update(s["fwd_hooks"])
            m._forward_hooks.update(ours)
            m._forward_pre_hooks.clear()
            m._forward_pre_hooks.update(s["pre_hooks"])
            # Children added during validation are detached; removed ones are re-attached.
            cur_names = dict(m.named_children())
            for cname in list(cur_names):
                full = f"{name}.{cname}" if name else cname
                if full not in self.modules:
                    delattr(m, cname)
            for full, cs in self.modules.items():
                parent, _, cname = full.rpartition(".")
                if parent == name and cname and getattr(m, cname, None) is not cs["module"]:
                    setattr(m, cname, cs["module"])
        if not only_drawn_from(self.rng, capture_rng()):
            restore_rng(self.rng)


_MISSING = object()


def _names(names, limit=4):
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
