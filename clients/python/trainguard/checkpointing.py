"""The Guard's own checkpoints: save (safetensors weights + a torch.save side file), load, and
registration with the sidecar (RegisterCheckpoint), which verifies and tracks them as known-good.

Checkpoints written by other code (torch.save, Lightning, torch.distributed.checkpoint, Trainer)
are described by ``trainguard.checkpoints`` (formats) and registered through ``register``.
"""
import logging
import os
import warnings

import grpc
import torch

from . import distributed as dist_agree
from . import integrity
from .connection import UNREACHABLE, grpc_code
from .errors import TrainguardError
from .safetensors_io import read_safetensors, write_safetensors
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")


def reports_first(guard, step):
    """The sidecar judges a checkpoint against the steps it has seen (one registered before any step
    is the run's start state, known-good at once): the reports of steps up to ``step`` still queued
    or held go first. Normally long sent: then nothing is waited for."""
    guard.sender.flush_through(step, guard.deadline)


def register_deadline(guard):
    """A RegisterCheckpoint call's deadline: the sidecar verifies files before it answers."""
    return max(guard.deadline, 2.0)


def register(guard, step, files, fmt=pb.CHECKPOINT_FORMAT_SAFETENSORS, data_position=0, process=None):
    """Sends RegisterCheckpoint for ``files`` ([pb.CheckpointFile]); returns the sidecar's
    checkpoint message, or None when the sidecar is unreachable (fail-open) or does not track
    checkpoints. Raises TrainguardError on a refusal. ``process``: a ReportProcess that makes the
    call (off this process's GIL) where it has a child ready; else this process makes it."""
    req = pb.RegisterCheckpointRequest(run_id=guard.run, rank=guard.rank, step=int(step), format=fmt,
                                       files=files, data_position=int(data_position))
    reports_first(guard, step)
    try:
        raw = None
        if process is not None and process.usable:
            raw = process.call(req.SerializeToString(), register_deadline(guard), method="RegisterCheckpoint")
        resp = (pb.RegisterCheckpointResponse.FromString(raw) if raw is not None
                else guard.transport.call("RegisterCheckpoint", req, deadline=register_deadline(guard)))
    except grpc.RpcError as e:
        if grpc_code(e) in UNREACHABLE:
            guard.connection.unreachable("RegisterCheckpoint", e)
            return None
        if grpc_code(e) == grpc.StatusCode.UNIMPLEMENTED:
            # An older sidecar: the files are saved and restorable locally, just not tracked.
            warnings.warn(f"trainguard sidecar does not track checkpoints yet ({e.details()}); "
                          f"step {step} saved locally only", RuntimeWarning)
            return None
        raise TrainguardError(f"RegisterCheckpoint step {step}: {grpc_code(e).name}: {e.details()}") from None
    return resp.checkpoint


def as_dict(c):
    return {"checkpoint_id": c.checkpoint_id, "state": pb.CheckpointState.Name(c.state),
            "state_reason": c.state_reason, "step": c.step}


def refuse_sharded(guard):
    """save_checkpoint writes one safetensors file of the whole model from rank 0: sharded parameters
    (FSDP2's DTensors, FSDP1's flat shards) would give rank 0's shards alone, or fail inside the write
    while the other ranks wait at the barrier. Said on every rank, so none of them waits."""
    from .snapshot_layout import is_dtensor
    if any(is_dtensor(p) for p in guard.model.parameters()) or type(guard.model).__name__ == "FullyShardedDataParallel":
        raise TrainguardError("guard.save_checkpoint writes the whole model from rank 0 and cannot save sharded "
                              "parameters (FSDP): save with torch.distributed.checkpoint (dcp.save(state, "
                              "checkpoint_id=dir)) on every rank, then guard.checkpoint_saved(dir, step), and set "
                              "guard.restore_hook to load it (dcp.load)")


def save(guard, directory, step, data_position=0, extra=None):
    """See Guard.save_checkpoint."""
    loop_step = int(step)  # what the loop resumes from (side["step"] + 1): its own numbering
    step = guard.numbering.to_guard(loop_step)
    refuse_sharded(guard)  # on every rank, before any of them writes or waits
    path = os.path.abspath(os.path.join(directory, f"step-{int(step):08d}"))
    weights = os.path.join(path, "model.safetensors")
    distributed = dist_agree.is_initialized() and guard.world_size > 1
    writer = guard.rank == 0 or not distributed
    sha, size = "", 0
    if writer:
        os.makedirs(path, exist_ok=True)
        sha, size = write_safetensors(guard.model.state_dict(), weights,
                                      metadata={"step": str(step), "run": guard.run})
        # "step": the loop's number, which a resumed loop continues from and the restored guard state
        # (its renumbering after a rollback) maps again; "guard_step": the number the sidecar knows it by
        side = {"optimizer": guard.optimizer.state_dict(), "step": loop_step, "guard_step": int(step),
                "data_position": int(data_position),
                "scheduler": guard.scheduler.state_dict() if guard.scheduler is not None else None,
                "scaler": guard.scaler.state_dict() if guard.scaler is not None else None,
                "guard": guard.state_dict(), "extra": extra, "lr_scale": guard.recovery.lr.scale}
        torch.save(side, os.path.join(path, "trainer.pt.tmp"))
        os.replace(os.path.join(path, "trainer.pt.tmp"), os.path.join(path, "trainer.pt"))
    # No barrier: the usual DDP loop saves on rank 0 only (``if rank == 0: save``), where one would wait
    # forever. The other ranks need not wait for the files either: a ROLLBACK names them only after
    # rank 0 registered them and the sidecar verified them, and every rank loads from the plan's path.
    entry = {"dir": path, "files": [weights], "checkpoint_id": "", "data_position": int(data_position),
             "lr_scale": guard.recovery.lr.scale,
             "stat": integrity.stat_of([weights, os.path.join(path, "trainer.pt")]) if writer else {}}
    guard.checkpoints[int(step)] = entry
    if not writer:
        return None
    c = register(guard, step, [pb.CheckpointFile(path=weights, sha256=sha, size_bytes=size)],
                 data_position=data_position)
    if c is None:
        return None
    entry["checkpoint_id"] = c.checkpoint_id
    return as_dict(c)


def load(guard, path_or_step):
    """See Guard.load_checkpoint."""
    d = guard.checkpoints[path_or_step]["dir"] if isinstance(path_or_step, int) else path_or_step
    if d.endswith(".safetensors"):
        d = os.path.dirname(d)
    # Everything is read and checked before the model is touched: nothing half-loaded.
    if not os.path.exists(d):
        raise FileNotFoundError(f"{d} is gone")
    if not is_own_layout(d):
        if os.path.isfile(os.path.join(d, "trainer.pt")):  # save_checkpoint's side file: the weights went since
            raise FileNotFoundError(f"{d} has the trainer.pt guard.save_checkpoint wrote but not its "
                                    f"model.safetensors: deleted since")
        raise TrainguardError(
            f"{d} is not a checkpoint written by guard.save_checkpoint (no model.safetensors + trainer.pt): a "
            f"checkpoint saved by other code (torch.save, accelerator.save_state, fabric.save) is restored by "
            f"the loader set as guard.restore_hook = lambda path, plan: ... (docs/client.md)")
    try:
        weights = read_safetensors(os.path.join(d, "model.safetensors"))
        side = torch.load(os.path.join(d, "trainer.pt"), map_location=guard.device)
    except Exception as e:  # truncated, overwritten: not the state that was registered
        raise TrainguardError(f"{d} cannot be read any more ({type(e).__name__}: {e}): damaged since it was "
                              f"written") from e
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise TrainguardError(f"{d} holds non-finite values now ({', '.join(bad[:3])}): changed since the sidecar "
                              f"verified it")
    guard.model.load_state_dict({k: v.to(guard.device) for k, v in weights.items()})
    guard.optimizer.load_state_dict(side["optimizer"])
    if guard.scheduler is not None and side.get("scheduler") is not None:
        guard.scheduler.load_state_dict(side["scheduler"])
    if guard.scaler is not None and side.get("scaler") is not None:
        guard.scaler.load_state_dict(side["scaler"])
    return side


def is_own_layout(d):
    """Whether ``d`` (a directory) holds what guard.save_checkpoint writes."""
    return all(os.path.isfile(os.path.join(d, f)) for f in ("model.safetensors", "trainer.pt"))


def files_of(path_or_dir_or_files):
    """The regular files a checkpoint consists of: a file, every file under a directory, or a list."""
    if isinstance(path_or_dir_or_files, (list, tuple)):
        return [os.path.abspath(str(f)) for f in path_or_dir_or_files]
    p = os.path.abspath(str(path_or_dir_or_files))
    if os.path.isdir(p):
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs)
    return [p]


def checkpoint_saved(guard, path_or_dir_or_files, step, data_position=0):
    """Guard.checkpoint_saved: records a checkpoint other code wrote and registers it."""
    from . import checkpoints as formats  # imports torch.distributed.checkpoint helpers: only when used
    # Every rank records the entry (a ROLLBACK may name it); rank 0 registers, and so does the first rank
    # of each other sidecar (one per node) where it sees the files (a shared volume): its sidecar needs
    # rollback targets too. An unreachable sidecar is the failure mode's business, like every other call.
    given = [path_or_dir_or_files] if isinstance(path_or_dir_or_files, (str, os.PathLike)) else path_or_dir_or_files
    other_rank = guard.rank != 0 and dist_agree.is_initialized() and guard.world_size > 1 and not (
        guard.every_rank.registers_snapshots() and all(os.path.exists(os.fspath(p)) for p in given))
    if other_rank:  # rank 0 wrote it, maybe only on its own disk, maybe not yet: nothing to look at here
        files = listed = [os.path.abspath(os.fspath(p)) for p in given]
    else:
        files = formats._paths(path_or_dir_or_files)  # raises when a path does not exist
        listed = files_of(files[0] if len(files) == 1 else files)
    step = guard.numbering.to_guard(int(step))  # a loop that kept counting after a rollback (numbering.py)
    # The LR cut in force is in the saved optimizer's rates: a rollback to it measures its cut from there.
    entry = {"dir": files[0], "files": listed, "checkpoint_id": "", "data_position": int(data_position),
             "lr_scale": guard.recovery.lr.scale, "stat": {} if other_rank else integrity.stat_of(listed)}
    earlier = guard.checkpoints.get(int(step))
    guard.checkpoints[int(step)] = entry
    if getattr(guard, "restore_hook", None) is None and not getattr(guard, "_warned_no_loader", False) and not (
            os.path.isdir(files[0]) and is_own_layout(files[0])):
        guard._warned_no_loader = True  # once per Guard
        log.warning("trainguard: checkpoint_saved(%s): no guard.restore_hook is set, and a ROLLBACK to it would "
                    "need one (it is not guard.save_checkpoint's layout): set guard.restore_hook = lambda path, "
                    "plan: <your loader> (torch.load + load_state_dict, accelerator.load_state, fabric.load)", files[0])
    if other_rank:
        return None
    reports_first(guard, step)
    try:
        c = formats.register_saved(guard, files, step, data_position=data_position)
    except grpc.RpcError as e:
        if grpc_code(e) in UNREACHABLE:
            guard.connection.unreachable("RegisterCheckpoint", e)
            return None
        # refused (a path outside trainguard.checkpoint.roots...): no rollback target; what was there stays
        if earlier is None:
            guard.checkpoints.pop(int(step), None)
        else:
            guard.checkpoints[int(step)] = earlier
        raise TrainguardError(f"RegisterCheckpoint step {step}: {grpc_code(e).name}: {e.details()}") from None
    entry["checkpoint_id"] = c["checkpoint_id"]
    return c
