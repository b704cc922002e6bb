"""The trainings one TrainguardCallback guards: the first; ``train()`` called again (a notebook,
``hyperparameter_search``), which gets a run id of its own; and the Trainer's own retry of its training
loop at a smaller batch after an out-of-memory error (``auto_find_batch_size``), which is no new
training but the same ``train()`` going on, so it keeps the run.

The retry: accelerate's ``find_executable_batch_size`` catches the error out of ``_inner_training_loop``
and calls it again with a smaller ``batch_size``. The Trainer then starts afresh (a new TrainerState
numbered from step 0, a new LR scheduler, its data from the start) while the model and the optimizer
keep the updates the failed attempt made, as they do without the guard. The attempt ended by an
exception, for which the Trainer fires no event, so its Guard is still open. Before, it was closed as a
train() "called again" and the retry opened run ``<run>-2``: the user's one ``train()`` was split over
two runs, with a warning that it had been called twice. Now its Guard is closed with the run left
open and a fresh Guard (the Trainer's new scheduler) re-opens the same run, as a restarted trainer
does; its steps are numbered on from the failed attempt's (never from 0 again: the run's record has
those steps), and the LR cut in force, which the optimizer's rates carry, is carried over."""
import logging

log = logging.getLogger("trainguard")


def batch_size_retry(callback, trainer, args):
    """Whether this ``on_train_begin`` is ``trainer`` retrying its training loop at a smaller batch: the
    same Trainer, ``auto_find_batch_size``, the last attempt ended by an exception (its Guard is open)
    and the batch is smaller than that attempt's. A ``train()`` called again starts at the batch the last
    attempt ended with, so it is not taken for one."""
    if not getattr(args, "auto_find_batch_size", False) or trainer is None or trainer is not callback._trainer:
        return False
    if callback.guard is None or callback.guard._closed:
        return False
    size, before = getattr(trainer, "_train_batch_size", None), callback._batch_size
    return size is not None and before is not None and size < before


def begin(callback, trainer, args):
    """Called at ``on_train_begin`` before the Guard is built. Returns ``(first step, LR cut)`` for a
    batch-size retry, which goes on with the same run; None for a training of its own (its steps
    numbered from the Trainer's ``global_step``)."""
    if batch_size_retry(callback, trainer, args):
        return _go_on(callback, trainer)
    callback._trainings += 1
    if callback._trainings > 1:
        _new_run(callback)
    return None


def _unhook(callback):
    if callback._hook is not None:
        callback._hook.remove()
        callback._hook = None


def _go_on(callback, trainer):
    """Closes the failed attempt's Guard with the run left open: the next Guard re-opens it and numbers
    its steps on from the last one the run recorded."""
    old = callback.guard
    first = max(callback.step, old.last_step + 1 if old.last_step is not None else 0)
    cut = float(old.recovery.lr.scale)
    _unhook(callback)
    old.close(f"the Trainer retries its training loop at batch size {trainer._train_batch_size} after an "
              f"out-of-memory error at batch size {callback._batch_size} (auto_find_batch_size)", close_run=False)
    callback.verdicts.extend(old.gated.late.take())  # the attempt's last skips on the device gate
    log.warning("trainguard: the retry at batch size %d goes on with run '%s' from step %d: the Trainer numbers its "
                "steps from 0 again and starts a new LR schedule and TrainerState, while the model and optimizer keep "
                "the failed attempt's updates, as without the guard", trainer._train_batch_size, callback.run, first)
    return first, cut


def _new_run(callback):
    """``train()`` called again: a run id of its own, ``<run>-<n>``; the last run is closed (at its end,
    or now, when it ended by an exception, which the Trainer fires no event for)."""
    ended = "was closed at the end of the last one"
    if callback.guard is not None and not callback.guard._closed:
        _unhook(callback)  # its hooks and wrapper go now
        callback.guard.close("training ended by an exception; train() was called again")
        ended = "ended by an exception and is closed now"
    last, callback.run = callback.run, f"{callback._base_run}-{callback._trainings}"
    log.warning("trainguard: train() called again with this TrainguardCallback: run '%s' %s, this one is run '%s'",
                last, ended, callback.run)
