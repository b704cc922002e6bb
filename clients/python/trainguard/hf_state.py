"""The HF Trainer's TrainerState as a rollback and a resume need it (``trainer_state.json`` in each
checkpoint): the guard's LR cut that rides in it, and the best-model record and stateful callbacks'
counters a rollback rewinds to the restored checkpoint's."""
import json
import os

# The guard's LR cut rides in the TrainerState the Trainer saves with every checkpoint (trainer_state.json,
# under ``stateful_callbacks``, which it saves and loads as it is). Not as an ExportableState callback: the
# Trainer would rebuild one from its saved arguments on resume, dropping the user's own instance.
STATE_KEY = "trainguard"


def saved_cut(stateful):
    """The LR cut recorded in a TrainerState's ``stateful_callbacks`` (None: a checkpoint without it)."""
    entry = stateful.get(STATE_KEY) if isinstance(stateful, dict) else None
    cut = entry.get("lr_scale") if isinstance(entry, dict) else None
    return float(cut) if cut is not None else None


def trainer_state(path):
    """A Trainer checkpoint's trainer_state.json as a dict, or None."""
    try:
        with open(os.path.join(path, "trainer_state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def checkpoint_cut(path):
    """The LR cut a Trainer checkpoint directory's optimizer/scheduler state was saved under, or None."""
    saved = trainer_state(path)
    return saved_cut(saved.get("stateful_callbacks")) if saved is not None else None


def rewind_bookkeeping(path, state, trainer, own_callback):
    """The Trainer's record of its best model and its stateful callbacks' counters (EarlyStopping's
    patience) as the checkpoint at ``path`` saved them, into the running ``state`` and ``trainer``'s
    callbacks (``own_callback`` left out): left at the abandoned steps' values,
    ``load_best_model_at_end`` loaded a checkpoint of those steps at the end (undoing the rollback) and
    early stopping counted their evaluations."""
    saved = trainer_state(path)
    if saved is None or state is None:
        return
    for key in ("best_metric", "best_model_checkpoint", "best_global_step"):
        if hasattr(state, key):
            setattr(state, key, saved.get(key))
    stateful = saved.get("stateful_callbacks") or {}
    for cb in (trainer.callback_handler.callbacks if trainer is not None else ()):
        entry = stateful.get(type(cb).__name__)
        if cb is own_callback or not isinstance(entry, dict) or not hasattr(cb, "state"):
            continue
        for name, value in (entry.get("attributes") or {}).items():
            setattr(cb, name, value)
