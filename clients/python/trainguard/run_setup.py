"""What the client tells the sidecar when it opens a run: policy overrides, the model's parameter
groups and watched modules, and the precision setup the pre-flight audit judges."""
import torch

from .verdict import Action
from ._proto.trainguard.v1 import trainguard_pb2 as pb

DTYPE = {torch.float32: pb.D_TYPE_FLOAT32, torch.float16: pb.D_TYPE_FLOAT16, torch.bfloat16: pb.D_TYPE_BFLOAT16,
         torch.float64: pb.D_TYPE_FLOAT64, torch.int64: pb.D_TYPE_INT64, torch.int32: pb.D_TYPE_INT32,
         torch.int16: pb.D_TYPE_INT16, torch.int8: pb.D_TYPE_INT8, torch.uint8: pb.D_TYPE_UINT8,
         torch.bool: pb.D_TYPE_BOOL}
_ENUM_PREFIX = {"clip_mode": "CLIP_MODE_", "spike_action": "ACTION_", "preflight_mode": "AUDIT_MODE_"}


def build_policy(overrides):
    """The Policy message for ``Guard(policy=...)``; a ValueError naming the key and what it takes for a
    key, type or choice the message cannot hold (before, a raw protobuf error that named neither)."""
    p = pb.Policy()
    for key, value in (overrides or {}).items():
        if key not in pb.Policy.DESCRIPTOR.fields_by_name:
            raise ValueError(f"unknown policy key {key!r}{_did_you_mean(key)}; the keys are "
                             f"{', '.join(sorted(pb.Policy.DESCRIPTOR.fields_by_name))} (docs/policy.md)")
        try:
            if key in ("hang_min", "hang_max"):
                getattr(p, key).FromNanoseconds(int(float(value) * 1e9))
            elif key in _ENUM_PREFIX:
                setattr(p, key, int(value) if isinstance(value, Action) else _enum_number(key, value))
            else:
                setattr(p, key, value)
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"policy {key!r}={value!r}: {_expects(key)} ({type(e).__name__}: {e})") from None
    return p


def _did_you_mean(key):
    """A close valid key: the CLI's and REST's camelCase spelling, or a typo."""
    import difflib
    snake = "".join("_" + c.lower() if c.isupper() else c for c in key)
    if snake in pb.Policy.DESCRIPTOR.fields_by_name:
        return f" (the Python client spells it {snake!r})"
    close = difflib.get_close_matches(key, list(pb.Policy.DESCRIPTOR.fields_by_name), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _expects(key):
    if key in ("hang_min", "hang_max"):
        return "expects seconds, a number"
    if key in _ENUM_PREFIX:
        enum = _ENUMS[key]
        return "expects one of " + ", ".join(n[len(_ENUM_PREFIX[key]):] for n in enum.keys() if not n.endswith("UNSPECIFIED"))
    field = pb.Policy.DESCRIPTOR.fields_by_name[key]
    kind = {field.TYPE_DOUBLE: "a number", field.TYPE_FLOAT: "a number", field.TYPE_INT32: "an integer",
            field.TYPE_INT64: "an integer", field.TYPE_BOOL: "True or False"}.get(field.type, "another type")
    return f"expects {kind}"


_ENUMS = {"clip_mode": pb.ClipMode, "spike_action": pb.Action, "preflight_mode": pb.AuditMode}


def _enum_number(key, value):
    if isinstance(value, int) and not isinstance(value, bool):  # the enum's number
        return value
    if not isinstance(value, str):
        raise TypeError(f"a name, not {type(value).__name__}")
    return _ENUMS[key].Value(_ENUM_PREFIX[key] + value.upper())


def describe(optimizer, watched, master_weights):
    groups, total = [], 0
    for i, g in enumerate(optimizer.param_groups):
        ps = g["params"]
        n = sum(p.numel() for p in ps)
        total += n
        dtype = ps[0].dtype if ps else torch.float32
        groups.append(pb.ParameterGroup(name=str(g.get("name", f"group{i}")), parameter_count=n,
                                        dtype=DTYPE.get(dtype, pb.D_TYPE_UNSPECIFIED), trainable=True,
                                        has_master_copy=master_weights))
    return pb.ModelDescription(parameter_groups=groups, watched_modules=list(watched), parameter_count=total)


def precision(model, optimizer, scaler, autocast_dtype, master_weights, clipping_configured, framework):
    ps = [p for p in model.parameters() if p.requires_grad]
    pdtype = ps[0].dtype if ps else torch.float32
    d = optimizer.defaults
    eps = d.get("eps", 0.0)
    eps = eps[0] if isinstance(eps, (tuple, list)) else eps
    eps = float(eps or 0.0)  # None: Adafactor's default (1e-3 relative), no fixed epsilon to audit
    state_dtypes = set()
    for st in list(optimizer.state.values())[:4]:
        for v in st.values():
            if torch.is_tensor(v) and v.dim() > 0:
                state_dtypes.add(DTYPE.get(v.dtype, pb.D_TYPE_UNSPECIFIED))
    if not state_dtypes and ps:
        state_dtypes.add(DTYPE.get(pdtype, pb.D_TYPE_UNSPECIFIED))  # torch optimizers keep state in the param dtype
    return pb.PrecisionSetup(
        parameter_dtype=DTYPE.get(pdtype, pb.D_TYPE_UNSPECIFIED),
        autocast_dtype=DTYPE.get(autocast_dtype, pb.D_TYPE_UNSPECIFIED) if autocast_dtype else pb.D_TYPE_UNSPECIFIED,
        optimizer_name=type(optimizer).__name__, optimizer_eps=eps,
        loss_scaler=bool(scaler is not None and scaler.is_enabled()),
        master_weights=master_weights, clipping_configured=clipping_configured,
        clipping_effective=clipping_configured, framework=framework,
        optimizer_state_dtypes=sorted(state_dtypes))


def open_request(guard):
    return pb.OpenRunRequest(
        run_id=guard.run, rank=guard.rank, world_size=guard.world_size,
        policy=build_policy(guard.policy_overrides),
        model=describe(guard.optimizer, guard.watch.names if guard.watch else [], guard.master_weights),
        precision=precision(guard.model, guard.optimizer, guard.scaler, guard.autocast_dtype, guard.master_weights,
                            guard.clipping_configured, guard.framework),
        trainer_instance=guard.trainer_instance)


_CHOICES = {"failure_mode": ("open", "closed"), "mode": ("async", "sync"), "device_gate": ("auto", True, False),
            "grad_sync": ("auto", "replicated", "sharded"), "report_process": ("auto", True, False)}


def check_choices(**args):
    """Raises ValueError naming the Guard argument whose value is not one of its choices."""
    for name, value in args.items():
        if value not in _CHOICES[name]:
            choices = " or ".join(f'"{c}"' if isinstance(c, str) else str(c) for c in _CHOICES[name])
            raise ValueError(f"{name} must be {choices}, not {value!r}")


def check_optimizer(optimizer, model):
    """The optimizer a Guard is built on. Raises TypeError for one the Guard cannot hook: Accelerate's
    ``AcceleratedOptimizer`` (what ``accelerator.prepare()`` returns) is no torch Optimizer and has no
    step hooks. An earlier Guard's wrapper (``opt = guard.wrap(optimizer)`` kept in a notebook, handed to
    ``Guard(model, opt)`` after ``close()``) gives its inner optimizer: the wrapper and the schedulers
    built on it then follow the new Guard (wrap._Follows); built on the wrapper itself, the new Guard
    stepped through the closed one, which judged nothing."""
    from .wrap import GuardedOptimizer, ParametersOnly
    if optimizer is None:  # a manual update loop (docs/client.md): the model's parameters stand in
        return ParametersOnly(model)
    while isinstance(optimizer, GuardedOptimizer):
        optimizer = optimizer.optimizer
    if type(optimizer).__name__ == "AcceleratedOptimizer":
        raise TypeError("trainguard.Guard was given the optimizer accelerator.prepare() returned (an "
                        "AcceleratedOptimizer): build the Guard on your torch optimizer before prepare() and hand "
                        "prepare() the wrapper: guard = Guard(model, optimizer, ...); model, opt = "
                        "accelerator.prepare(model, guard.wrap(optimizer)) (docs/client.md, Accelerate)")
    return optimizer
