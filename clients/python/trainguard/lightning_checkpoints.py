"""Which of Lightning's ``ModelCheckpoint`` files the callback registers, and which it may restore.

A registered checkpoint is the sidecar's known-good candidate for one step, so it must keep holding
that step's state:

- the files of a save are those whose identity (size, mtime, inode) changed between just before
  the save's first ``on_save_checkpoint`` and the next batch: the top-k / ``every_n_train_steps``
  files it wrote, not the older ones still on disk (a resumed fit's among them);
- ``ModelCheckpoint``'s last checkpoint (``last.ckpt``, ``last_model_path``; a symlink under
  ``save_last="link"``) is rewritten at every later save: it is never registered;
- before a rollback loads a registered file it checks that the file is still the one registered
  (a fixed ``filename`` is rewritten in place too); a changed or deleted file is skipped, and the
  rollback goes to the newest older registered checkpoint still intact.
"""
import logging
import os

import torch

log = logging.getLogger("trainguard")


def identity(path):
    """What tells a rewritten file from the one registered: a rewrite changes the size or mtime, a
    replace (write to a temporary file, rename) the inode."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _callbacks(trainer):
    return getattr(trainer, "checkpoint_callbacks", []) or []


def weights_only_dirs(trainer):
    """The dirpath of every ModelCheckpoint(save_weights_only=True): Lightning calls no callback's
    ``on_save_checkpoint`` for its saves, and its files hold no optimizer state to roll back to."""
    return [getattr(cb, "dirpath", None) for cb in _callbacks(trainer) if getattr(cb, "save_weights_only", False)]


def rewritten_in_place(trainer):
    """The paths ModelCheckpoint overwrites at later saves: each callback's last checkpoint."""
    return {os.path.abspath(cb.last_model_path) for cb in _callbacks(trainer) if getattr(cb, "last_model_path", "")}


def files_on_disk(trainer):
    """{path: identity} of every checkpoint file the ModelCheckpoint callbacks name, in the order
    they name them (top-k first), the last checkpoint and symlinks left out."""
    paths = []
    for cb in _callbacks(trainer):
        paths += list(getattr(cb, "best_k_models", {}) or {})
        paths += [getattr(cb, a, "") or "" for a in ("best_model_path", "_last_checkpoint_saved")]
    skip = rewritten_in_place(trainer)
    out = {}
    for p in paths:
        p = os.path.abspath(p) if p else p
        if p and p not in out and p not in skip and not os.path.islink(p) and os.path.isfile(p):
            out[p] = identity(p)
    return out


def written_since(trainer, before):
    """The files of the saves since ``before`` (a ``files_on_disk`` result): new or rewritten."""
    return [p for p, ident in files_on_disk(trainer).items() if before.get(p) != ident]


def restorable(entry):
    """(path, why not): the first of the entry's Lightning files still the one that was registered,
    else None and the reason ("gone" or "rewritten since it was registered")."""
    idents = entry.get("identity") or {}
    paths = list(idents) or ([entry["restore"]] if entry.get("restore") else [])
    why = "gone"
    for p in paths:
        if not os.path.isfile(p):
            continue
        if p in idents and identity(p) != list(idents[p]):
            why = "rewritten since it was registered"
            continue
        return p, ""
    return None, why


def _has_weights_copy(entry, files=()):
    return any(f.endswith(".safetensors") and os.path.isfile(f) for f in list(files) + list(entry.get("files") or []))


def _registered_earlier(plan):
    """An entry for a checkpoint this process never registered (a fit resumed after a crash: the killed
    process registered it) from the files the sidecar's plan names; no identity to compare with."""
    ckpt = next((f for f in plan.files or () if f.endswith(".ckpt") and os.path.isfile(f)), None)
    return {"restore": ckpt, "files": list(plan.files or ())} if ckpt else {}


def entry_to_restore(guard, plan):
    """The entry of the plan's checkpoint; if its file is gone (ModelCheckpoint(save_top_k=k) deletes
    all but the k best) or rewritten, the newest older registered one still intact, with
    ``plan.checkpoint_step`` moved to it (the rollback resumes after that step)."""
    entry = guard.checkpoints.get(plan.checkpoint_step) or _registered_earlier(plan)
    ckpt, why = restorable(entry)
    if ckpt or _has_weights_copy(entry, plan.files or ()):
        return entry
    older = [s for s, e in guard.checkpoints.items()
             if s < plan.checkpoint_step and (restorable(e)[0] or _has_weights_copy(e))]
    if not older:
        # a FileNotFoundError: the rollback turns it into TrainingHalted with this reason
        raise FileNotFoundError(f"its checkpoint ({entry.get('restore')}) is {why} (ModelCheckpoint's save_top_k "
                                f"deletes files, a fixed filename is rewritten) and no older registered checkpoint "
                                f"is intact; use save_top_k=-1 with a step in the filename, or weights_copy=True")
    step = max(older)
    log.warning("trainguard: the checkpoint of step %d (%s) is %s, so it no longer holds the state the sidecar "
                "verified; rolling back to step %d instead", plan.checkpoint_step, entry.get("restore"), why, step)
    plan.checkpoint_step = step
    plan.files = []
    plan.data_position = guard.checkpoints[step].get("data_position", step + 1)
    return guard.checkpoints[step]


def load_precision_state(plugin, state):
    """The precision plugin's state (a GradScaler's scale and growth tracker), as Lightning 2.x restores it:
    saved under the plugin's class name ("MixedPrecision"); Lightning 1.x's ``native_amp_scaling_state``
    otherwise. Left as it is, the scale the NaN burst halved stays after the rollback."""
    plugin.on_load_checkpoint(state)
    own = state.get(type(plugin).__qualname__)
    if own:
        plugin.load_state_dict(own)
        return
    scaler = getattr(plugin, "scaler", None)
    if scaler is not None and state.get("native_amp_scaling_state"):
        scaler.load_state_dict(state["native_amp_scaling_state"])


def say_weights_only_no_target(trainer):
    # Lightning saves these without calling on_save_checkpoint, so they would go unregistered silently
    for dirpath in weights_only_dirs(trainer):
        log.warning("trainguard: ModelCheckpoint(save_weights_only=True, dirpath=%s) writes no rollback targets: "
                    "its files hold the weights only, not the optimizer's moments, LR schedulers or AMP scaler, "
                    "and a rollback must restore all of them (old weights with the moments of the abandoned steps "
                    "is no known-good state). Rollbacks go to the guard's in-memory snapshots and to other "
                    "ModelCheckpoints' files: add one without save_weights_only (e.g. "
                    "ModelCheckpoint(every_n_train_steps=N, save_top_k=k)) for targets on disk", dirpath)


def restore(guard, trainer, pl_module, plan, callback):
    """The callback's restore hook: the registered Lightning checkpoint of ``plan``, or the weights
    copy beside it when that file is gone or rewritten."""
    entry = entry_to_restore(guard, plan)
    ckpt, _ = restorable(entry)
    if ckpt:
        load_lightning_checkpoint(trainer, pl_module, ckpt, callback)
        log.warning("trainguard: restored Lightning checkpoint %s (step %d)", ckpt, plan.checkpoint_step)
        return
    files = plan.files or entry.get("files") or []
    weights = next((f for f in files if f.endswith(".safetensors") and os.path.isfile(f)), None)
    if weights is None:
        raise FileNotFoundError(f"rollback to step {plan.checkpoint_step}: neither the Lightning checkpoint "
                                f"({entry.get('restore')}) nor a weights file is there any more")
    from .safetensors_io import read_safetensors
    pl_module.load_state_dict({k: v.to(pl_module.device) for k, v in read_safetensors(weights).items()})
    log.warning("trainguard: Lightning checkpoint %s is gone or rewritten; restored the weights only from %s "
                "(optimizer state kept)", entry.get("restore"), weights)


def load_lightning_checkpoint(trainer, pl_module, ckpt, callback):
    """Loads ``ckpt`` in Lightning's order, the other callbacks' ``on_load_checkpoint`` last (EMA
    WeightAveraging's puts the trained weights back over the averaged ``state_dict``); not their own
    state (``load_state_dict``): a rollback rewinds the model, not ModelCheckpoint's records."""
    state = torch.load(ckpt, map_location=pl_module.device, weights_only=False)
    pl_module.on_load_checkpoint(state)
    pl_module.load_state_dict(state["state_dict"])
    for opt, s in zip(trainer.optimizers, state.get("optimizer_states", [])):
        opt.load_state_dict(s)
    for cfg, s in zip(getattr(trainer, "lr_scheduler_configs", []) or [], state.get("lr_schedulers", [])):
        cfg.scheduler.load_state_dict(s)
    load_precision_state(trainer.precision_plugin, state)
    for cb in trainer.callbacks:
        if cb is not callback:
            cb.on_load_checkpoint(trainer, pl_module, state)
