"""Registering the checkpoints users' own code and frameworks write, and restoring through them.

The sidecar verifies, without executing any pickle: torch.save files (``.pt``/``.pth``/``.bin``,
Lightning ``.ckpt``; torch >= 1.6 zip layout), safetensors (also sharded, with
``model.safetensors.index.json``), torch.distributed.checkpoint directories (``.metadata`` +
``.distcp``), and sets of these (weights + optimizer + trainer state). A checkpoint is KNOWN_GOOD
only when every file verified, optimizer state included.

``Guard.checkpoint_saved(path_or_dir_or_list, step, data_position=0)`` is a thin method over
:func:`register_saved`; restoring goes through the user's own callables (torchft's
``Manager(load_state_dict=..., state_dict=...)`` pattern), see :func:`restore`.
"""
import contextlib
import importlib
import os
import pickle
import sys
import types

from ._proto.trainguard.v1 import trainguard_pb2 as pb

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _paths(path_or_dir_or_list):
    items = [path_or_dir_or_list] if isinstance(path_or_dir_or_list, (str, os.PathLike)) else list(path_or_dir_or_list)
    if not items:
        raise ValueError("register_saved needs at least one file or directory")
    out = []
    for p in items:
        p = os.path.abspath(os.fspath(p))
        if not os.path.exists(p):
            raise FileNotFoundError(f"checkpoint path {p}: no such file or directory; register it after saving it")
        out.append(p)
    return out


def _format(paths):
    # The sidecar reads torch.save zips by their bytes whatever the label; a label of TORCH_PICKLE
    # would make it refuse safetensors files of a mixed set (HF: model.safetensors + optimizer.pt).
    if any(p.endswith(".safetensors") for p in paths):
        return pb.CHECKPOINT_FORMAT_SAFETENSORS
    if any(p.endswith(_TORCH_SUFFIXES) for p in paths):
        return pb.CHECKPOINT_FORMAT_TORCH_PICKLE
    return pb.CHECKPOINT_FORMAT_SAFETENSORS


def register_saved(target, path_or_dir_or_list, step, data_position=0, run=None, rank=None, deadline=10.0):
    """Registers files the user already saved as the checkpoint of ``step``.

    ``target`` is a ``Guard`` (its run, rank and transport are used) or a ``Transport`` (then give
    ``run``). ``path_or_dir_or_list``: one file, a directory (the sidecar takes the checkpoint files
    in it: DCP shards and ``.metadata``, HF shards and index, ``.pt``/``.ckpt``...), or a list of
    both (model, optimizer, trainer state). ``data_position`` is where the data loader resumes.

    Returns ``{"checkpoint_id", "state", "state_reason", "step"}``; verification runs in the
    background, the state becomes VERIFIED or REJECTED/UNVERIFIABLE with a reason.
    Raises ``grpc.RpcError`` when the sidecar refuses (e.g. a path outside its checkpoint roots).
    """
    transport = getattr(target, "transport", target)
    run = run if run is not None else getattr(target, "run", None)
    if run is None:
        raise ValueError("register_saved(transport, ...) needs run=<run id>")
    rank = rank if rank is not None else getattr(target, "rank", 0)
    paths = _paths(path_or_dir_or_list)
    req = pb.RegisterCheckpointRequest(run_id=run, rank=int(rank), step=int(step), format=_format(paths),
                                       files=[pb.CheckpointFile(path=p) for p in paths],
                                       data_position=int(data_position))
    c = transport.call("RegisterCheckpoint", req, deadline=deadline).checkpoint
    return {"checkpoint_id": c.checkpoint_id, "state": pb.CheckpointState.Name(c.state),
            "state_reason": c.state_reason, "step": c.step, "files": paths}


def checkpoint_state(target, checkpoint_id, run=None, deadline=5.0):
    """The sidecar's current record of a registered checkpoint, as a dict (None if unknown)."""
    transport = getattr(target, "transport", target)
    run = run if run is not None else getattr(target, "run", None)
    resp = transport.call("GetRun", pb.GetRunRequest(run_id=run), deadline=deadline)
    for c in resp.checkpoints:
        if c.checkpoint_id == checkpoint_id:
            return {"checkpoint_id": c.checkpoint_id, "state": pb.CheckpointState.Name(c.state),
                    "state_reason": c.state_reason, "step": c.step, "files": [f.path for f in c.files]}
    return None


def restore(files, load_state_dict=None, load=None):
    """Restores a rollback target through the user's own code.

    ``load(files)`` (the user's loader: a list of the checkpoint's registered paths) returns the
    state, or does the whole restore itself; without it, a single torch.save file is read with
    ``torch.load(..., weights_only=True)`` (never executing pickled code, like the sidecar).
    ``load_state_dict(state)`` then applies it (torchft's ``Manager(load_state_dict=...)``
    pattern). Returns the state.
    """
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    gone = [f for f in files if not os.path.exists(f)]
    if gone:  # a rollback target rotated away since it was registered: said as such, not as a loader's want
        raise FileNotFoundError(f"{', '.join(map(str, gone[:3]))} {'is' if len(gone) == 1 else 'are'} gone")
    if load is not None:
        state = load(files)
    elif len(files) == 1 and os.path.isfile(files[0]):
        state = _load_weights_only(files[0])
    else:
        raise ValueError(f"restore of {files} needs load=<your loader>: only a single torch.save file is read "
                         "without one")
    if load_state_dict is not None:
        load_state_dict(state)
    return state


# What a tensor checkpoint's pickle may name (the sidecar's allow-list, less what torch.load resolves
# itself: storage types). Anything else raises UnpicklingError naming it; nothing is executed.
# The plain data classes the sidecar's verifier accepts too (RestrictedUnpickler's DATA_CLASSES): a
# training script's arguments saved beside the weights (timm's CheckpointSaver: argparse.Namespace),
# paths, Lightning's hyperparameters. Without them a checkpoint the sidecar made known-good could not
# be restored and the rollback halted.
_DATA_CLASSES = {("argparse", "Namespace"), ("pathlib", "Path"), ("pathlib", "PosixPath"),
                 ("pathlib", "WindowsPath"), ("torch.torch_version", "TorchVersion"),
                 ("lightning.fabric.utilities.data", "AttributeDict"),
                 ("lightning.pytorch.utilities.parsing", "AttributeDict"),
                 ("pytorch_lightning.utilities.parsing", "AttributeDict"),
                 # numpy arrays, dtypes and scalars (np.random.get_state() saved with the weights), numpy 1 and 2
                 ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_ALLOWED = {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
            ("torch", "Size"), ("torch", "device"), ("torch.serialization", "_get_layout")} | _DATA_CLASSES


def _data_classes():
    """The classes of _DATA_CLASSES whose modules are importable here (Lightning's only when loaded)."""
    out = []
    for module, name in sorted(_DATA_CLASSES):
        if module.split(".")[0] in ("lightning", "pytorch_lightning") and module not in sys.modules:
            continue  # a checkpoint holding one comes from a process that had Lightning loaded
        try:
            out.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    try:  # numpy >= 1.25: a dtype object is built as its own class (numpy.dtypes.Float64DType, ...)
        import numpy.dtypes
        out += [c for c in vars(numpy.dtypes).values() if isinstance(c, type) and issubclass(c, numpy.dtype)]
    except ImportError:
        pass
    return out


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        import torch
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}: not part of a tensor checkpoint")


_allow_list_pickle = types.SimpleNamespace(__name__="trainguard_allow_list_pickle", Unpickler=_AllowListUnpickler,
                                           load=lambda f, **kw: _AllowListUnpickler(f, **kw).load())


def _load_weights_only(path):
    """torch.load that never executes pickled code. torch 1.13's ``weights_only`` reader lacks
    opcodes every optimizer state needs (BINFLOAT: the learning rate), so there the allow-list above
    runs on the standard pickle VM instead, through torch's zip reader (1.13's torch.load ignores
    ``pickle_module`` unless ``weights_only``, hence the private ``_load``)."""
    import torch
    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with safe(_data_classes()) if safe else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if safe is not None and "Unsupported operand" not in str(e):
            raise  # before 2.5 the data classes cannot be admitted there: the allow-list below admits them
    ser = torch.serialization
    with open(path, "rb") as f:
        if not ser._is_zipfile(f):
            raise pickle.UnpicklingError(f"{path}: a legacy (pre-zip) torch.save file; restore it with load=<your loader>")
        with ser._open_zipfile_reader(f) as z:
            return ser._load(z, "cpu", _allow_list_pickle, encoding="utf-8")
