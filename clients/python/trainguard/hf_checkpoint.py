"""The HF Trainer's checkpoint folders as rollback targets: each ``checkpoint-N/`` the Trainer saves is
registered with the sidecar (``register_save``), and a ROLLBACK to one restores its weights (sharded
ones merged), ``optimizer.pt``, ``scheduler.pt`` and ``scaler.pt`` (``restore``)."""
import glob
import logging
import os

import torch

from .errors import TrainguardError
from .safetensors_io import read_safetensors

log = logging.getLogger("trainguard")

# The tensor state only: rng_state.pth pickles numpy arrays and training_args.bin a Python object,
# which the sidecar's restricted unpickler refuses (the whole checkpoint REJECTED).
STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")


def register_save(guard, step, args, state):
    """Registers the folder the Trainer just saved for ``state.global_step`` as the guard's ``step`` (the
    last step whose update is in it); the rollback loads it through ``restore``."""
    path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
    if not os.path.isdir(path):
        return
    files = [os.path.join(path, f) for f in sorted(os.listdir(path))
             if f.endswith(".safetensors") or f in STATE_FILES]
    try:
        guard.checkpoint_saved(files or path, step, data_position=state.global_step * args.gradient_accumulation_steps)
    except TrainguardError as e:  # refused (output_dir outside trainguard.checkpoint.roots): no rollback target
        if guard.failure_mode == "closed":
            raise
        log.error("trainguard: %s; the Trainer's checkpoints are no rollback targets until output_dir lies under "
                  "the sidecar's trainguard.checkpoint.roots", e)
        return
    guard.checkpoints[step]["restore"] = path


def folder_of(target):
    """The checkpoint folder a plan's file names: the plan's own files name it, since a step number
    alone may be taken twice in one run (a resumed run renumbers; an earlier process registered its own)."""
    return target if os.path.isdir(target) or not os.path.splitext(target)[1] else os.path.dirname(target)


def restore(path, model, optimizer, scheduler, scaler, checkpoint_step):
    """Loads the Trainer checkpoint folder ``path`` into the training's objects (those given: None is
    left alone). Raises FileNotFoundError when its weights are gone."""
    shards = sorted(glob.glob(os.path.join(path, "model.safetensors")) or
                    glob.glob(os.path.join(path, "model-*-of-*.safetensors")))
    if not shards:
        raise FileNotFoundError(f"the checkpoint {path} has no model.safetensors (or shards): deleted (the "
                                f"Trainer's save_total_limit rotation?) or saved in another layout")
    weights = shards[0] if len(shards) == 1 else path
    state = {}
    for f in shards:
        state.update(read_safetensors(f))
    device = next(model.parameters()).device
    missing, unexpected = model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
    tied = _tied_to_loaded(model, missing, state)
    if unexpected or set(missing) - tied:
        log.warning("trainguard: restoring %s: missing %s, unexpected %s", weights, sorted(set(missing) - tied),
                    sorted(unexpected))
    for name, obj in zip(STATE_FILES, (optimizer, scheduler, scaler)):
        f = os.path.join(path, name)
        if obj is not None and os.path.isfile(f):
            obj.load_state_dict(torch.load(f, map_location=device, weights_only=False))
        elif obj is not None:  # save_only_model=True: the weights alone
            log.warning("trainguard: %s has no %s (save_only_model=True?): its state is kept as it is", path, name)
    log.warning("trainguard: restored Trainer checkpoint %s (step %d)", path, checkpoint_step)


def _tied_to_loaded(model, missing, loaded):
    """The missing keys whose tensor shares its storage with a loaded one: tied weights (GPT-2's
    lm_head, T5/BART's embed_tokens and shared), which safetensors checkpoints store once."""
    live = model.state_dict()
    ptrs = {live[k].data_ptr() for k in loaded if k in live}
    return {k for k in missing if k in live and live[k].data_ptr() in ptrs}
