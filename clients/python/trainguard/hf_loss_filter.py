"""The Hugging Face Trainer's NaN/Inf loss filter, done on the device.

With ``logging_nan_inf_filter`` (the Trainer's default) every micro-batch's loss is checked with
``torch.isnan(loss) or torch.isinf(loss)`` in Python: a host read, so each step waits for its
backward to finish before the host goes on, and everything the host does next (the optimizer's
launch, the scheduler, the next batch, the next forward's launches) finds the GPU idle. On GPT-2
small at batch 8 on an H200 that wait costs the Trainer about 7 % of its step (docs/benchmarks.md,
Issue 21, twenty-first pass). Under the guard the check no longer protects the weights: a
non-finite step is skipped before the optimizer reads it. The Trainer still needs it for the loss it
logs, because its accumulator never recovers from a NaN (it is reset by subtracting it from itself).

``LossFilter`` makes the same choice on the device: the micro-batch's loss where it is finite, else
the stand-in the Trainer adds (its accumulator over one plus the steps since the last log), and it
tells the Trainer that this micro-batch is checked by lowering ``logging_nan_inf_filter`` until the
Trainer's next callback event (``check_done``, from ``RaiseFlag``, first in the callback list, so no
other callback sees it lowered). Evaluation and saving, which read the same flag, raise it first
themselves, also after an exception cut the step short. It needs the accumulator on the Trainer
(``Trainer._tr_loss``, transformers >= 5); on other versions, and where the Trainer skips its own
check (torch_xla installed), the Trainer is left as it is.
"""
import torch
from transformers import TrainerCallback

try:
    from transformers.utils import is_torch_xla_available
except ImportError:  # older transformers: the Trainer checks torch_xla its own way
    def is_torch_xla_available():
        return True


class LossFilter:
    """Installed around ``trainer.training_step`` by ``TrainguardCallback`` (at ``on_train_begin``, or
    by ``attach(trainer)``)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.enabled = True         # False: the Trainer's own check (its host read) runs again
        self._inner = trainer.training_step
        self._lowered = False
        self.counters = {"on_device": 0, "left_to_the_trainer": 0}

    @classmethod
    def install(cls, trainer):
        """The filter on ``trainer`` (the one already there on a second call); None where the user
        turned the Trainer's filter off: there is nothing to take over."""
        if not getattr(trainer.args, "logging_nan_inf_filter", False):
            return None
        present = getattr(trainer.__dict__.get("training_step"), "__self__", None)
        if isinstance(present, cls):
            return present
        if is_torch_xla_available():  # the Trainer does not filter there: nothing to take over
            return None
        lf = cls(trainer)
        trainer.training_step = lf.training_step
        # A new list, not an insert: installed from on_train_begin, the Trainer is iterating the list
        # it holds, and an insert at 0 would run the current callback's event a second time.
        handler = trainer.callback_handler
        handler.callbacks = [RaiseFlag(lf)] + handler.callbacks
        for name in ("evaluation_loop", "save_model"):  # the flag's other readers (training_args.bin)
            lf._raise_before(name)
        return lf

    def _raise_before(self, name):
        inner = getattr(self.trainer, name, None)
        if inner is None:
            return

        def raised_first(*args, **kwargs):
            self.check_done()
            return inner(*args, **kwargs)
        raised_first.trainguard_inner = inner  # hf_evaluation looks through it for its own wrapper
        setattr(self.trainer, name, raised_first)

    def training_step(self, *args, **kwargs):
        self.check_done()  # a Trainer that ran no callback event since the last micro-batch
        loss = self._inner(*args, **kwargs)
        t = self.trainer
        acc = getattr(t, "_tr_loss", None)
        last = getattr(t, "_globalstep_last_logged", None)
        if not (self.enabled and t.args.logging_nan_inf_filter and torch.is_tensor(loss) and loss.numel() == 1
                and torch.is_tensor(acc) and acc.device == loss.device and last is not None):
            self.counters["left_to_the_trainer"] += 1
            return loss
        stand_in = acc / (1 + t.state.global_step - last)  # what the Trainer adds for a non-finite loss
        filtered = torch.where(torch.isfinite(loss), loss, stand_in)
        t.args.logging_nan_inf_filter = False  # read once, right after this returns: done above
        self._lowered = True
        self.counters["on_device"] += 1
        return filtered

    def check_done(self):
        """The Trainer's check of the last micro-batch is past: its flag goes back to on."""
        if self._lowered:
            self.trainer.args.logging_nan_inf_filter = True
            self._lowered = False


class RaiseFlag(TrainerCallback):
    """First in the Trainer's callback list: at the first event after the Trainer's check of a
    micro-batch's loss, before any other callback runs, the flag goes back to on."""

    def __init__(self, loss_filter):
        self.loss_filter = loss_filter

    def on_substep_end(self, args, state, control, **kwargs):  # after a micro-batch that ends no cycle
        self.loss_filter.check_done()

    on_pre_optimizer_step = on_substep_end  # after the cycle's last micro-batch
