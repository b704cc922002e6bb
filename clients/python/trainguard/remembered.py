"""How the validation audit (audit.py) remembers one attribute value: the object itself (identity),
and for a small value what is needed to see an in-place change and undo it; its changes in words."""
import enum
import math
import types
import weakref

import torch

_SCALARS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, enum.Enum)
_SMALL_CONTAINER = 64   # lists/dicts up to this size are compared item by item
_SMALL_OBJECT = 16      # plain objects with up to this many attributes are compared attribute by attribute
_SMALL_TENSOR = 4096    # plain (non-parameter) tensor attributes up to this many elements keep their values
_DEPTH = 2              # how far into containers/objects an attribute is followed


def short(v, limit=48):
    if isinstance(v, _SCALARS):
        text = repr(v)
    elif isinstance(v, types.FunctionType):
        text = v.__qualname__
    elif isinstance(v, (types.BuiltinFunctionType, types.MethodType)):
        text = getattr(v, "__name__", type(v).__name__)
    elif isinstance(v, type):
        text = f"class {v.__qualname__}"
    elif torch.is_tensor(v):
        text = f"tensor{tuple(v.shape)} {v.dtype}"
    else:
        text = type(v).__qualname__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Remembered:
    """What the audit keeps of one attribute value: the object itself (identity), and for small
    values what is needed to see an in-place change and undo it."""
    __slots__ = ("obj", "scalar", "version", "values", "items", "attrs")

    def __init__(self, v, depth, own):
        self.obj, self.scalar, self.version, self.values, self.items, self.attrs = v, False, None, None, None, None
        if isinstance(v, _SCALARS):
            self.scalar = True
        elif torch.is_tensor(v):
            if id(v) not in own:  # the model's own parameters/buffers are audited as tensors
                self.version = v._version
                if v.numel() <= _SMALL_TENSOR:
                    self.values = v.detach().clone()
        elif depth >= _DEPTH or isinstance(v, (torch.nn.Module, type, types.FunctionType, types.MethodType,
                                                 types.BuiltinFunctionType, types.ModuleType)):
            pass  # identity only
        elif isinstance(v, (list, tuple)) and len(v) <= _SMALL_CONTAINER:
            self.items = [Remembered(x, depth + 1, own) for x in v]
        elif isinstance(v, dict) and len(v) <= _SMALL_CONTAINER:
            self.items = {k: Remembered(x, depth + 1, own) for k, x in v.items()}
        elif isinstance(v, (set, frozenset)) and len(v) <= _SMALL_CONTAINER:
            self.items = frozenset(v)
        elif isinstance(getattr(v, "__dict__", None), dict) and len(v.__dict__) <= _SMALL_OBJECT:
            # a small plain object, e.g. an attention processor holding its scale
            self.attrs = {k: Remembered(x, depth + 1, own) for k, x in v.__dict__.items()}

    def changes(self, cur, path, out):
        """Appends a text per change between what was remembered and ``cur``."""
        if self.scalar:
            if not (cur is self.obj or (type(cur) is type(self.obj) and _equal(cur, self.obj))):
                out.append(f"{path} {short(self.obj)} -> {short(cur)}")
            return
        if cur is not self.obj and not self._same_contents(cur):
            before, after = short(self.obj), short(cur)
            out.append(f"{path} replaced ({before} -> {after})" if before != after else f"{path} replaced by another {after}")
            return
        if cur is not self.obj:
            return  # rebuilt with the same contents (an LSTM's _flat_weights after .to()): no change
        if self.version is not None and (cur._version != self.version or self.values is not None and (
                cur.shape != self.values.shape or not torch.equal(cur.detach(), self.values))):
            out.append(f"{path} changed in place")
        if isinstance(self.items, list):
            if len(cur) != len(self.items):
                out.append(f"{path} changed in place (length {len(self.items)} -> {len(cur)})")
            else:
                for i, (r, x) in enumerate(zip(self.items, cur)):
                    r.changes(x, f"{path}[{i}]", out)
        elif isinstance(self.items, dict):
            dict_changes(self.items, cur, path, out, "[{!r}]")
        elif isinstance(self.items, frozenset) and frozenset(cur) != self.items:
            out.append(f"{path} changed in place")
        if self.attrs is not None:
            dict_changes(self.attrs, cur.__dict__, path, out, ".{}")

    def _same_contents(self, cur):
        if isinstance(self.obj, weakref.ref) and isinstance(cur, weakref.ref):
            return cur() is not None and cur() is self.obj()
        if self.items is None or type(cur) is not type(self.obj) or isinstance(self.items, frozenset):
            return False
        found = []
        if isinstance(self.items, list):
            if len(cur) != len(self.items):
                return False
            for r, x in zip(self.items, cur):
                r.changes(x, "", found)
        else:
            dict_changes(self.items, cur, "", found, "[{!r}]")
        return not found

    def restore_inside(self):
        """Undoes in-place changes inside the remembered object (the caller puts the object itself back)."""
        v = self.obj
        if self.values is not None and v._version != self.version and v.shape == self.values.shape:
            with torch.no_grad():
                v.copy_(self.values)
        if isinstance(self.items, list):
            if isinstance(v, list):
                v[:] = [r.obj for r in self.items]
            for r in self.items:
                r.restore_inside()
        elif isinstance(self.items, dict):
            v.clear()
            v.update({k: r.obj for k, r in self.items.items()})
            for r in self.items.values():
                r.restore_inside()
        elif isinstance(self.items, frozenset) and isinstance(v, set):
            v.clear()
            v.update(self.items)
        if self.attrs is not None:
            for k in [k for k in v.__dict__ if k not in self.attrs]:
                del v.__dict__[k]
            v.__dict__.update({k: r.obj for k, r in self.attrs.items()})
            for r in self.attrs.values():
                r.restore_inside()


def _equal(a, b):
    try:
        return bool(a == b) or (isinstance(a, float) and math.isnan(a) and math.isnan(b))
    except Exception:  # noqa: BLE001 - a value without a usable __eq__ counts as changed
        return False


def dict_changes(before, now, path, out, key_format):
    for k, r in before.items():
        sub = path + key_format.format(k)
        if k not in now:
            out.append(f"{sub} removed")
        else:
            r.changes(now[k], sub, out)
    out.extend(f"{path + key_format.format(k)} added ({short(now[k])})" for k in now if k not in before)
