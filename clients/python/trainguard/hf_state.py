"""The HF Trainer's TrainerState as a rollback and a resume need it (``trainer_state.json`` in each
checkpoint): the guard's LR cut that rides in it, and the best-model record and stateful callbacks'
counters a rollback rewinds to the restored step's (``TrainerBooks``: an in-memory snapshot has no
trainer_state.json, so the callback keeps them per step itself)."""
import copy
import json
import logging
import os

log = logging.getLogger("trainguard")

# The TrainerState's record of its best model: a rollback must not leave it at an abandoned step.
BEST_KEYS = ("best_metric", "best_model_checkpoint", "best_global_step")

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


def stateful_callbacks(trainer, own_callback):
    """The Trainer's callbacks whose counters its checkpoints save (``ExportableState``: EarlyStopping's
    patience), ``own_callback`` left out; none without the Trainer (a callback is not handed it)."""
    try:
        from transformers.trainer_callback import ExportableState
    except ImportError:  # transformers < 4.42: its checkpoints save no callback's counters either
        return []
    callbacks = trainer.callback_handler.callbacks if trainer is not None else ()
    return [cb for cb in callbacks if isinstance(cb, ExportableState) and cb is not own_callback]


def _record(state, callbacks):
    """The best-model record and each stateful callback's attributes, as they stand now (copies)."""
    best = tuple(getattr(state, key, None) for key in BEST_KEYS)
    return best, tuple((cb, copy.deepcopy((cb.state() or {}).get("attributes") or {})) for cb in callbacks)


def _put_back(record, state):
    best, counters = record
    for key, value in zip(BEST_KEYS, best):
        if hasattr(state, key):
            setattr(state, key, value)
    for cb, attributes in counters:
        for name, value in attributes.items():
            setattr(cb, name, copy.deepcopy(value))


class TrainerBooks:
    """The Trainer's best-model record (``best_metric``, ``best_model_checkpoint``, ``best_global_step``)
    and its stateful callbacks' counters as they stood after each guard step, kept only where they
    changed (an evaluation, a save: a few entries per run, not one per step). A rollback, to an
    in-memory snapshot or to a checkpoint folder alike, puts back the record of the step it restores:
    left at the abandoned steps' values, ``load_best_model_at_end`` loaded a checkpoint of those steps
    at the end (undoing the rollback), the Trainer's next save pointed ``best_model_checkpoint`` at
    ``best_global_step``'s folder again, and early stopping counted their evaluations."""

    def __init__(self):
        self._kept = []  # [(guard step, record)], the steps ascending

    def begin(self, step, state, callbacks):
        """A training starts with its own TrainerState, which stands after the guard's step ``step``."""
        self._kept = []
        self.note(step, state, callbacks)

    def note(self, step, state, callbacks):
        """The record after the guard's step ``step``: called as the next step is judged, once every
        evaluation and save of ``step`` is done (the Trainer runs them after on_step_end)."""
        record = _record(state, callbacks)
        if not self._kept or self._kept[-1][1] != record:
            self._kept.append((step, record))

    def rewind(self, step, state, callbacks, folder=None):
        """Puts the record as of the guard's step ``step`` back into ``state`` and ``callbacks``, and
        forgets the later ones (their step numbers are taken again). A step before this training's first
        record (a checkpoint an earlier process saved) is read from ``folder``'s trainer_state.json;
        with neither, the best-model record is dropped, since it may name an abandoned step."""
        self._kept = [(s, r) for s, r in self._kept if s <= step]
        if self._kept:
            _put_back(self._kept[-1][1], state)
        elif folder is not None and trainer_state(folder) is not None:
            rewind_bookkeeping(folder, state, callbacks)
        else:
            for key in BEST_KEYS:
                if hasattr(state, key):
                    setattr(state, key, None)
            log.warning("trainguard: the Trainer's state at step %d is not known (before this training started): "
                        "its best-model record is dropped rather than left at an abandoned step", step)
        _forget_a_gone_best(state)


def _forget_a_gone_best(state):
    """The rewound best checkpoint's folder may be gone since (``save_total_limit`` rotation keeps only
    the newest and the best of its time): as the Trainer does on resume, it is dropped, with a warning,
    and no best model is loaded at the end unless a later evaluation beats ``best_metric``."""
    best = getattr(state, "best_model_checkpoint", None)
    if best is not None and not os.path.isdir(best):
        state.best_model_checkpoint = None
        log.warning("trainguard: the best checkpoint as of the restored step, %s, is gone from disk (save_total_limit "
                    "rotation?): the Trainer has no best checkpoint to load at the end unless a later evaluation "
                    "beats best_metric %s", best, getattr(state, "best_metric", None))


def rewind_bookkeeping(path, state, callbacks):
    """The Trainer's record of its best model and its stateful ``callbacks``' counters (EarlyStopping's
    patience) as the checkpoint at ``path`` saved them (trainer_state.json), into the running ``state``
    and ``callbacks``: for a rollback to a checkpoint an earlier process saved (``TrainerBooks``)."""
    saved = trainer_state(path)
    if saved is None or state is None:
        return
    for key in BEST_KEYS:
        if hasattr(state, key):
            setattr(state, key, saved.get(key))
    stateful = saved.get("stateful_callbacks") or {}
    for cb in callbacks:
        entry = stateful.get(type(cb).__name__)
        if not isinstance(entry, dict):
            continue
        for name, value in (entry.get("attributes") or {}).items():
            setattr(cb, name, value)
