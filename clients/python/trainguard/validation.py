"""Validation audit: a snapshot of everything validation must leave as it found it, a diff, and an undo.

Covers the Hallo failure class: a pipeline that re-patches a module's ``forward`` (no parameter
changes, so a checksum alone sees nothing), flips train/eval mode, casts or moves weights, adds
hooks, or reseeds the global RNG on one rank."""
import logging
import random
import sys

import grpc
import torch

from . import distributed as dist_agree
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")


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


class ValidationContext:
    """``with guard.validation(model) as v:`` — BeginValidation, the skip when not allowed, the
    audit (snapshot, diff, restore) and EndValidation."""

    def __init__(self, guard, model, step, restore):
        self.g, self.model, self.step, self.restore = guard, model, step, restore

    def __enter__(self):
        g = self.g
        self.step = self.step if self.step is not None else (g.last_verdict.step if g.last_verdict else 0)
        g.flush(g.deadline)  # the sidecar judges validation on up-to-date state
        allowed, reason = True, ""
        try:
            r = g.transport.call("BeginValidation", pb.BeginValidationRequest(run_id=g.run, rank=g.rank, step=self.step))
            allowed, reason = r.allowed, r.reason
        except grpc.RpcError as e:
            g.connection.unreachable("BeginValidation", e)  # raises when closed; open: validate, audit still runs
            reason = "sidecar unreachable; validating with the audit on"
        if dist_agree.is_initialized() and g.world_size > 1:
            allowed = dist_agree.all_true(allowed)
        self.session = ValidationSession(allowed, reason)
        self._old_trace = None
        if not allowed:
            self._skipping = True
            self._old_trace = skip_with_body(sys._getframe(1))
            return self.session
        self._skipping = False
        if g.watch:
            g.watch.enabled = False
        ours = set()
        if g.watch:
            for h in g.watch._handles:
                ours.add(h.id)
        self.snap = ModelSnapshot(self.model, keep_values=self.restore, ignore_hooks=ours)
        return self.session

    def __exit__(self, exc_type, exc, tb):
        g = self.g
        if self._skipping:
            sys.settrace(self._old_trace)
            return exc_type is _SkipBody
        if g.watch:
            g.watch.enabled = True
        p, d, w, r, details = self.snap.diff()
        changed = p or d or w or r
        if changed and self.restore:
            self.snap.restore()
            self.session.restored = True
        self.session.audit = {"parameters_changed": p, "dtype_device_mode_changed": d, "wiring_changed": w,
                              "rng_changed": r, "details": details, "restored": self.session.restored}
        audit = pb.ValidationAudit(parameters_changed=p, dtype_device_mode_changed=d, wiring_changed=w,
                                   rng_changed=r, details=details[:64], restored=self.session.restored)
        try:
            resp = g.transport.call("EndValidation", pb.EndValidationRequest(
                run_id=g.run, rank=g.rank, step=self.step, validation_loss=float(self.session.loss or 0.0), audit=audit))
            self.session.incident_ids = list(resp.incident_ids)
        except grpc.RpcError as e:
            if exc_type is None:
                g.connection.unreachable("EndValidation", e)
        if changed:
            g.counters["validation_incidents"] += 1
            log.warning("trainguard: validation changed the model (%s)%s", "; ".join(details[:8]),
                        ", undone" if self.session.restored else "")
        return False
