"""Update protection: undo an optimizer.step() that turned finite weights non-finite.

Low-precision parameters without fp32 master weights can be ruined by the update itself (an eps
that rounds to 0 in fp16 divides by ~0) although every gradient was finite. The protector copies
parameters and optimizer state before the step, checks the weights after it (one device read) and,
when they went non-finite, puts everything back and raises NonFiniteUpdate with the likely cause.
"""
import logging
import math

import torch

from .errors import NonFiniteUpdate
from .tensors import copy_tensors, foreach_norms

log = logging.getLogger("trainguard")


class UpdateProtector:
    def __init__(self, model, optimizer, watch=None, ship_bad_tensor=None):
        """``ship_bad_tensor(step, name, tensor)`` sends the bad parameter to the sidecar (optional)."""
        self.model, self.optimizer, self.watch = model, optimizer, watch
        self.ship_bad_tensor = ship_bad_tensor
        self._buffers = None

    def snapshot(self):
        """Copies parameters and optimizer state before optimizer.step() into buffers kept across
        steps (allocated once, refreshed by one foreach copy): a per-step clone and deepcopy would
        allocate ~3x the model every step."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        state = self.optimizer.state
        slots = [(p, k) for p in params for k, t in state.get(p, {}).items() if torch.is_tensor(t)]
        src = [p.detach() for p in params] + [state[p][k] for p, k in slots]
        buf = self._buffers
        if (buf is None or len(buf) != len(src)
                or any(b.shape != s.shape or b.dtype != s.dtype or b.device != s.device for b, s in zip(buf, src))):
            buf = self._buffers = [torch.empty_like(s) for s in src]
        copy_tensors(buf, src)
        # lists are copied (LBFGS appends to and pops from its history lists in place; their tensors it
        # replaces, never writes)
        others = {p: {k: list(v) if isinstance(v, list) else v for k, v in state[p].items() if not torch.is_tensor(v)}
                  for p in params if p in state}
        return params, slots, buf, others

    def release(self):
        """Frees the snapshot buffers (kept across steps for speed) when no further snapshot is due."""
        self._buffers = None

    def undo(self, snap):
        """Puts parameters (same objects, so the optimizer's references hold) and optimizer state
        back as they were before the step; state the step created is dropped."""
        params, slots, buf, others = snap
        state = self.optimizer.state
        with torch.no_grad():
            for p, b in zip(params, buf):
                p.copy_(b)
        for p in params:
            if p not in others:
                state.pop(p, None)
        for p, kv in others.items():
            state[p] = dict(kv)
        for (p, k), b in zip(slots, buf[len(params):]):
            state[p][k] = b.clone()

    def _not_finite(self, params):
        """The parameters that are not finite (one device read)."""
        # max |x|, not the L2 norm: a finite fp16 tensor's L2 norm can overflow fp16 (a false alarm)
        norms = foreach_norms([p.detach() for p in params], float("inf"))
        ok = torch.isfinite(torch.stack(norms)).tolist()
        return [p for p, good in zip(params, ok) if not good]

    def undo_if_not_finite(self, snap):
        """Undoes the update when it left a parameter non-finite; returns those parameters' names."""
        bad = self._not_finite(snap[0])
        if not bad:
            return []
        self.undo(snap)
        owner = {id(p): n for n, p in self.model.named_parameters()}
        return [owner.get(id(p), "?") for p in bad]

    def check(self, snap, step):
        """Raises NonFiniteUpdate (after undoing the update) when a parameter went non-finite."""
        params = snap[0]
        bad_params = self._not_finite(params)
        if not bad_params:
            return
        owner = {id(p): n for n, p in self.model.named_parameters()}
        bad = [owner.get(id(p), "?") for p in bad_params]
        order = self.watch.forward_order() if self.watch else []
        module = next((m for m in order if any(b == m or b.startswith(m + ".") for b in bad)), bad[0].rsplit(".", 1)[0])
        self.undo(snap)
        if self.ship_bad_tensor is not None:
            self.ship_bad_tensor(step, bad[0], bad_params[0])
        d = self.optimizer.defaults
        detail = (f"Non-finite parameters: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. "
                  f"Parameters are {params[0].dtype} without fp32 master weights and {type(self.optimizer).__name__} "
                  f"eps={d.get('eps')}: in {params[0].dtype} an eps below the smallest normal rounds to 0 and the "
                  f"first update divides by ~0. Keep fp32 master weights (AMP autocast + GradScaler, or "
                  f"DeepSpeed) or raise eps.")
        raise NonFiniteUpdate(step, module, detail)


def first_non_finite_state(model, optimizer, settled=frozenset()):
    """(name, tensor) of the first non-finite parameter, buffer or optimizer-state tensor of the live
    training state, or None. A host read per tensor: for a state already known to be bad.
    ``settled``: ids of buffers a skipped step puts back (running_stats), left out."""
    names = {id(p): n for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        if not _finite(p.detach()):
            return f"parameter {n}", p
    for n, b in model.named_buffers():
        if b.is_floating_point() and id(b) not in settled and not _finite(b):
            return f"buffer {n}", b
    for p, slots in getattr(optimizer, "state", {}).items():
        for key, t in (slots.items() if isinstance(slots, dict) else ()):
            if torch.is_tensor(t) and (t.is_floating_point() or t.is_complex()) and not _finite(t):
                return f"optimizer state {key} of {names.get(id(p), 'a parameter')}", t
    return None


def _finite(t):
    # this rank's shard of a DTensor (FSDP2): a whole-tensor test would be a collective, and only the
    # rank that saw the fault looks
    t = t.to_local() if hasattr(t, "to_local") else t
    return bool(torch.isfinite(t).all())


def say_corrupt_state(guard, step):
    """At a non-finite step: names what was already non-finite before its update (a weight, a buffer,
    the optimizer's state, a learning rate), which the module that first showed the NaN does not say:
    a fault that wrote into the weights, a scheduler that made the LR inf. Skipping such steps cannot
    help (the sidecar rolls back after its skip limit). Host reads per tensor: faulty steps only."""
    parts = []
    # the step's own forward wrote the normalization statistics (and the buffers found or named
    # as step_buffers): not a state from before it, and the step's settling puts them back
    found = first_non_finite_state(guard.model, guard.optimizer, guard.running_stats.settled_ids())
    if found is not None:
        parts.append(f"{found[0]} was already non-finite before this step's update")
    for i, grp in enumerate(guard.optimizer.param_groups):
        lr = grp.get("lr", 0.0)
        lr = float(lr) if not torch.is_tensor(lr) else float(lr.detach().float().reshape(-1)[0])
        if not math.isfinite(lr):
            parts.append(f"param group {i}'s learning rate is {lr} (a scheduler or the loop set it)")
            break
    if parts:
        log.warning("trainguard: step %d is non-finite, and %s: skipping steps cannot repair that, a rollback to a "
                    "known-good state can", step, "; ".join(parts))
    return parts


def ship_bad_tensor(guard, step, name, p, note="after optimizer.step, undone"):
    """Sends a tensor found non-finite (a parameter the update made so) to the sidecar (InspectTensors),
    which files an incident with its summary."""
    import grpc
    from ._proto.trainguard.v1 import trainguard_pb2 as pb
    t = p.detach().float().cpu().contiguous()
    raw = pb.RawTensor(name=f"{name} ({note})", dtype=pb.D_TYPE_FLOAT32,
                       shape=list(t.shape), data=t.reshape(-1).numpy().tobytes() if t.numel() else b"")
    try:
        guard.transport.call("InspectTensors", pb.InspectTensorsRequest(run_id=guard.run, rank=guard.rank, step=step,
                                                                       tensors=[raw]))
    except grpc.RpcError as e:
        log.warning("trainguard: could not ship the bad update to the sidecar: %s",
                    e.details() if hasattr(e, "details") else e)
