"""Validation audit: a snapshot of everything validation must leave as it found it, a diff, and an undo.

Covers the Hallo failure class: a pipeline that re-patches a module's ``forward`` (no parameter
changes, so a checksum alone sees nothing), flips train/eval mode, casts or moves weights, adds
hooks, or reseeds the global RNG on one rank."""
import random
import sys

import torch


def _rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        state["numpy"] = np.random.get_state()
    return state


def _rng_equal(a, b):
    if not torch.equal(a["torch"], b["torch"]) or a["python"] != b["python"]:
        return False
    if "cuda" in a and ("cuda" not in b or any(not torch.equal(x, y) for x, y in zip(a["cuda"], b["cuda"]))):
        return False
    if "numpy" in a and "numpy" in b:
        x, y = a["numpy"], b["numpy"]
        if x[0] != y[0] or x[2:] != y[2:] or not (x[1] == y[1]).all():
            return False
    return True


def _set_rng(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state and "numpy" in sys.modules:
        sys.modules["numpy"].random.set_state(state["numpy"])


class ModelSnapshot:
    def __init__(self, model, keep_values=True, ignore_hooks=()):
        self.model = model
        self.ignore_hooks = set(ignore_hooks)
        self.tensors = {}
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            self.tensors[name] = (t, t.dtype, t.device, t.detach().clone() if keep_values else None,
                                  float(t.detach().double().sum()) if not keep_values else None)
        self.modules = {}
        for name, m in model.named_modules():
            self.modules[name] = {
                "module": m, "training": m.training, "cls": type(m),
                "cls_forward": type(m).__dict__.get("forward", None) or type(m).forward,
                "inst_forward": m.__dict__.get("forward", None),
                "fwd_hooks": {k: v for k, v in m._forward_hooks.items() if k not in self.ignore_hooks},
                "pre_hooks": dict(m._forward_pre_hooks),
            }
        self.rng = _rng_state()

    # What kind of change a finding is; the order is the order details are listed in (most
    # telling first), since only the first few reach the sidecar and the log.
    WIRING, RNG, VALUES, PLACEMENT, TRAIN_MODE = range(5)

    def diff(self):
        """Returns (parameters_changed, dtype_device_mode_changed, wiring_changed, rng_changed, details)."""
        found = []  # (kind, text)
        now = dict(list(self.model.named_parameters()) + list(self.model.named_buffers()))
        for name, (t, dtype, device, value, checksum) in self.tensors.items():
            cur = now.get(name)
            if cur is None:
                found.append((self.WIRING, f"{name} removed"))
            elif cur.dtype != dtype or cur.device != device:
                found.append((self.PLACEMENT, f"{name} {dtype}/{device} -> {cur.dtype}/{cur.device}"))
            elif not (torch.equal(cur.detach(), value) if value is not None else
                      float(cur.detach().double().sum()) == checksum):
                found.append((self.VALUES, f"{name} values changed"))
        mods = dict(self.model.named_modules())
        for name, s in self.modules.items():
            m = mods.get(name)
            label = name or "<root>"
            if m is not s["module"]:
                found.append((self.WIRING, f"{label} replaced or removed"))
                continue
            if m.training != s["training"]:
                found.append((self.TRAIN_MODE, f"{label} train mode {s['training']} -> {m.training}"))
            if m.__dict__.get("forward", None) is not s["inst_forward"]:
                found.append((self.WIRING, f"{label}.forward replaced"))
            if type(m) is not s["cls"] or type(m).forward is not s["cls_forward"]:
                found.append((self.WIRING, f"{label}: class forward patched"))
            hooks = {k: v for k, v in m._forward_hooks.items() if k not in self.ignore_hooks}
            if hooks != s["fwd_hooks"] or dict(m._forward_pre_hooks) != s["pre_hooks"]:
                found.append((self.WIRING, f"{label} forward hooks changed"))
        for names, before in ((now, self.tensors), (mods, self.modules)):
            found += [(self.WIRING, f"{name} added") for name in names if name not in before]
        if not _rng_equal(self.rng, _rng_state()):
            found.append((self.RNG, "global RNG state changed"))
        found.sort(key=lambda f: f[0])  # stable: within a kind, discovery order
        kinds = {k for k, _ in found}
        return (self.VALUES in kinds, bool(kinds & {self.PLACEMENT, self.TRAIN_MODE}), self.WIRING in kinds,
                self.RNG in kinds, [text for _, text in found])

    def restore(self):
        """Undoes every change diff() can see. Parameter objects keep their identity, so the
        optimizer's references stay valid."""
        now = dict(list(self.model.named_parameters()) + list(self.model.named_buffers()))
        with torch.no_grad():
            for name, (t, dtype, device, value, _) in self.tensors.items():
                cur = now.get(name, t)
                if value is None:
                    continue
                if cur.dtype != dtype or cur.device != device:
                    cur.data = value.clone()
                elif not torch.equal(cur, value):
                    cur.copy_(value)
                if cur is not t:  # the tensor object itself was swapped: put the original back
                    t.data = value.clone()
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
        _set_rng(self.rng)


class _SkipBody(Exception):
    pass


class ValidationSession:
    """What ``with guard.validation(model) as v:`` yields: ``v.allowed``, ``v.reason``, and after the
    block ``v.audit`` (a dict) and ``v.incident_ids``. Set ``v.loss`` inside to report it."""

    def __init__(self, allowed, reason):
        self.allowed, self.reason = allowed, reason
        self.loss = 0.0
        self.audit = None
        self.incident_ids = []
        self.restored = False


def skip_with_body(frame):
    """Makes the ``with`` statement in ``frame`` skip its body (the body's first line raises
    _SkipBody, which the context manager's __exit__ swallows). CPython's tracing hooks are the only
    way a context manager can skip its own body."""
    old = sys.gettrace()

    def tracer(fr, event, arg):
        raise _SkipBody()

    if old is None:
        sys.settrace(lambda *a: None)
    frame.f_trace = tracer
    return old
