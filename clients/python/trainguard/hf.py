"""Hugging Face integration: the Trainer (a callback paired with the optimizer wrapper) and Accelerate.

    from trainguard.hf import TrainguardCallback
    trainer = transformers.Trainer(..., callbacks=[TrainguardCallback(run="my-run")])
    # or, on a Trainer built already: TrainguardCallback(run="my-run").attach(trainer)

The callback also takes the Trainer's per-step NaN/Inf loss filter over on the device
(``hf_loss_filter``): the Trainer then no longer waits for every step's backward on the host.
Given in ``callbacks=[...]`` it finds its Trainer at ``on_train_begin`` (``_trainer_running``);
``attach`` hands it over directly.

A ``TrainerCallback`` cannot veto an optimizer step, so at ``on_train_begin`` the callback puts
``guard.wrap(optimizer)`` inside the Trainer's ``AcceleratedOptimizer``: ``optimizer.step()`` then
runs only when the verdict allows it. ``on_pre_optimizer_step`` (after the Trainer's gradient
clipping) judges the step with the loss the model returned (a forward hook reads it as the Trainer's
``compute_loss`` does: ``output["loss"]``, or ``output[0]`` of a tuple; a custom ``compute_loss`` without
it reports the loss as absent and the gradients are judged). Under
gradient accumulation the step's loss is its cycle's, as the Trainer logs it (``CycleLoss``).
On the device gate the step is measured when the last micro-batch's backward ends, before the
Trainer's per-step loss read (``Guard.gate_on_backward``); ``on_pre_optimizer_step`` uses that
measurement unless the gradients changed since. With ``max_grad_norm`` set the Trainer clips in place
after backward; that measurement still holds (the norm before the clip is judged, and the guard's own
clip scales the clipped gradients once: backward_gate). Without a loss in the output the logits arm it.
Every checkpoint the Trainer saves (``on_save``) is registered with the sidecar (its tensor files:
``*.safetensors`` and ``optimizer.pt``/``scheduler.pt``/``scaler.pt``, all verified; not
``rng_state.pth`` or ``training_args.bin``, which pickle Python objects), and a ROLLBACK restores it: weights,
``optimizer.pt``, ``scheduler.pt`` and ``scaler.pt`` (``hf_checkpoint``). Every rollback, to a checkpoint
or an in-memory snapshot, also rewinds the Trainer's best-model record and early stopping's patience
to the restored step's (``hf_state.TrainerBooks``).

Accelerate without the Trainer: wrap before ``prepare`` and hand the guard the scaler::

    guard = trainguard.Guard(model, optimizer, run="my-run", scaler=accelerator.scaler)
    model, opt = accelerator.prepare(model, guard.wrap(optimizer))
    ... guard.gate_on_backward(loss); accelerator.backward(loss); guard.step(step, loss); opt.step(); opt.zero_grad()
"""
import logging
import sys

import torch
from transformers import Trainer, TrainerCallback

from .guard import Guard
from . import hf_checkpoint, hf_evaluation, hf_state, hf_trainings
from .hf_loss_filter import LossFilter
from .hooks import Detached
from .stats import grad_tensors
from .wrap import GuardedOptimizer

log = logging.getLogger("trainguard")


def install_wrapper(accelerated, wrapped):
    """Puts ``wrapped`` inside an Accelerate ``AcceleratedOptimizer`` (whose step() calls its inner
    optimizer's step(), through the GradScaler when there is one)."""
    accelerated.optimizer = wrapped
    if getattr(accelerated, "scaler", None) is not None and hasattr(accelerated, "_optimizer_original_step_method"):
        from accelerate.optimizer import patch_optimizer_step
        accelerated._optimizer_original_step_method = wrapped.step
        accelerated._optimizer_patched_step_method = patch_optimizer_step(accelerated, wrapped.step)


def _sync_gradients():
    """Whether this micro-batch ends a gradient-accumulation cycle (Accelerate's shared state)."""
    try:
        from accelerate.state import GradientState
        return GradientState().sync_gradients
    except Exception:  # another Accelerate layout: measure every backward, the last one is used
        return True


class CycleLoss:
    """The loss of one gradient-accumulation cycle, as the Trainer logs it, from its micro-batches'
    ``output.loss``: their sum when the model got ``num_items_in_batch`` (each is then already divided
    by the whole cycle's item count: transformers >= 4.46), else their mean (the Trainer divides each
    by the number of micro-batches). Judging only the last micro-batch's would miss a spike in an
    earlier one, and under ``num_items_in_batch`` report a fraction of the loss."""

    def __init__(self):
        self.reset()

    def reset(self):
        """A new cycle (``on_step_begin``)."""
        self._sum, self._count, self._absent, self._normalised = None, 0, False, False

    def add(self, loss, normalised):
        """One micro-batch's loss (None: absent, and so is the cycle's: a partial sum would understate
        it); ``normalised``: its forward got ``num_items_in_batch``."""
        self._count += 1
        self._normalised = normalised
        if loss is None or self._absent:
            self._absent, self._sum = True, None
            return
        loss = loss.detach()
        self._sum = loss if self._sum is None else self._sum + loss

    def value(self):
        """The cycle's loss so far: one new tensor (measured at backward and judged at step(): the
        same one), or the only micro-batch's own loss without accumulation; None when absent."""
        if self._sum is None or self._normalised or self._count == 1:
            return self._sum
        return self._sum / self._count


def model_loss(output):
    """The loss in a model's output, read as the Trainer's ``compute_loss`` reads it (transformers 5:
    ``outputs["loss"] if isinstance(outputs, dict) else outputs[0]``): a dict's (a ModelOutput is one)
    ``"loss"``, else a tuple's or list's first item, the convention of a model that returns
    ``(loss, logits, ...)`` (transformers' own with ``return_dict=False``). That item counts only as a
    one-element floating tensor: called without labels, such a model returns ``(logits, ...)``. None:
    no loss (the gradients are judged without one)."""
    if isinstance(output, dict):
        loss = output.get("loss")
    elif isinstance(output, (tuple, list)):
        loss = output[0] if output else None
        if not (torch.is_tensor(loss) and loss.numel() == 1 and loss.is_floating_point()):
            loss = None
    else:
        loss = getattr(output, "loss", None)
    return loss if torch.is_tensor(loss) else None


def _forward_hook(model, hook):
    """``hook(module, args, kwargs, output)`` on ``model``'s forward; kwargs is None where torch
    cannot pass them (< 2.0): the cycle's loss is then the mean of its micro-batches'."""
    try:
        return model.register_forward_hook(Detached(hook), with_kwargs=True)
    except TypeError:
        return model.register_forward_hook(Detached(lambda module, args, output: hook(module, args, None, output)))


def _trainer_running(callback):
    """The Trainer whose event ``callback`` is handling, or None. A callback is not handed its
    Trainer, but its events are fired by the Trainer's own methods (``_inner_training_loop`` calls
    ``callback_handler.on_train_begin``, which calls each callback's), so the Trainer is the ``self``
    of a frame a few levels up: the first Trainer there whose callback list holds ``callback``."""
    frame = sys._getframe(1)
    for _ in range(16):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer) and callback in owner.callback_handler.callbacks:
            return owner
        frame = frame.f_back
    return None


class TrainguardCallback(TrainerCallback):
    """Args: ``run`` (the run id), ``target`` (the sidecar; default $TRAINGUARD_TARGET),
    ``measure_at_backward`` (default True: ``Guard.gate_on_backward`` on the device gate),
    ``device_loss_filter`` (default True: the Trainer's NaN/Inf loss filter done on the device,
    ``hf_loss_filter``; False keeps the Trainer's own check, a host read per micro-batch) and any
    Guard keyword argument."""

    def __init__(self, run, target=None, measure_at_backward=True, device_loss_filter=True, **guard_kwargs):
        self.run, self.target, self.guard_kwargs = run, target, guard_kwargs
        self.measure_at_backward = measure_at_backward
        self.device_loss_filter = device_loss_filter
        self.guard = None
        self._base_run, self._trainings = run, 0
        self.step = 0            # the guard's step: optimizer steps, re-numbered after a rollback
        self.verdicts = []       # (step, action name, reasons) of every verdict that was not APPLY
        self._loss = None        # the cycle's loss, set at its last micro-batch's forward
        self._cycle = CycleLoss()
        self._hook = None
        self._model = self._optimizer = self._scheduler = None
        self.loss_filter = None  # hf_loss_filter.LossFilter of the Trainer running this callback
        self._state = self._trainer = None  # the running training's TrainerState and Trainer
        self._batch_size = None  # the Trainer's batch at the last on_train_begin (auto_find_batch_size's retry)
        self._books = hf_state.TrainerBooks()  # its best-model record per step, for rollbacks to rewind
        self._stateful = []      # its callbacks whose counters a rollback rewinds (EarlyStopping)
        self._restored_folder = None  # the checkpoint folder the rollback being applied restored
        self._filter_said = False

    def attach(self, trainer):
        """Adds this callback to ``trainer`` (unless it is there) and, unless ``device_loss_filter``
        is off, takes the Trainer's NaN/Inf loss filter over on the device (``hf_loss_filter``).
        Returns the callback."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        hf_evaluation.install(self, trainer)
        if self.device_loss_filter:
            self.loss_filter = LossFilter.install(trainer)
        return self

    def on_init_end(self, args, state, control, **kwargs):
        trainer = _trainer_running(self)  # an evaluate() before train() is audited too
        if trainer is not None:
            hf_evaluation.install(self, trainer)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if optimizer is None or model is None:
            raise ValueError("trainguard.hf.TrainguardCallback needs the Trainer's model and optimizer at on_train_begin")
        inner = getattr(optimizer, "optimizer", optimizer)
        while isinstance(inner, GuardedOptimizer):  # train() again: the last run's wrapper is still in place
            inner = inner.optimizer
        if inner is optimizer:
            raise TypeError("the Trainer's optimizer is not an Accelerate AcceleratedOptimizer; build the Trainer "
                            "with optimizers=(guard.wrap(optimizer), scheduler) and use trainguard.Guard directly")
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)
        trainer = _trainer_running(self)
        # train() again: a run of its own; the Trainer's retry at a smaller batch: the same run, numbered on
        going_on = hf_trainings.begin(self, trainer, args)
        # Resuming (resume_from_checkpoint): number the steps on from the Trainer's, so that the checkpoints
        # this process registers do not take the step numbers of the ones the run registered before.
        self.step, self._loss = going_on[0] if going_on else int(state.global_step), None
        self._trainer, self._batch_size = trainer, getattr(trainer, "_train_batch_size", None)
        self._state = state  # the TrainerState of this training (a rollback rewinds its best-model record)
        self._cycle.reset()
        if args.save_total_limit:
            log.warning("trainguard: save_total_limit=%s: the Trainer deletes old checkpoints, possibly the one a "
                        "ROLLBACK returns to (training then halts); keep more checkpoints or save less often",
                        args.save_total_limit)
        if getattr(args, "n_gpu", 1) > 1 and getattr(getattr(args, "parallel_mode", None), "value", "") == "not_distributed":
            log.warning("trainguard: the Trainer runs the model under torch.nn.DataParallel on %d GPUs: each step is "
                        "judged by the gradients gathered on the first GPU, without the loss or the watched modules' "
                        "statistics, which the replicas compute (trainguard.hooks). Launch with torchrun (DDP) to "
                        "have them", args.n_gpu)
        kwargs_ = dict(self.guard_kwargs)
        kwargs_.setdefault("framework", "transformers")
        kwargs_.setdefault("clipping_configured", bool(args.max_grad_norm))
        kwargs_.setdefault("replay", False)  # the Trainer's loop cannot pass guard.step a replay function
        self.guard = Guard(model, inner, self.run, target=self.target, scheduler=scheduler,
                           scaler=getattr(optimizer, "scaler", None), **kwargs_)
        install_wrapper(optimizer, self.guard.wrap(inner))
        self.guard.restore_hook = self._restore
        self._resume_cut(state, carried=going_on[1] if going_on else None)
        if args.max_grad_norm:
            # The Trainer clips in place after backward, once: the measurement at backward's end
            # still holds, judged on the norm before the clip (backward_gate._loop_clip).
            self.guard.backward_gate.clip_max_norm = float(args.max_grad_norm)
        else:
            # transformers >= 5 reads the grad norm every step through clip_grad_norm_(inf) (its
            # Trainer._get_grad_norm): the gradients are multiplied by exactly 1.0 in place, their
            # values unchanged. Older ones write nothing, so no write is vouched for there.
            self.guard.backward_gate.noop_writes = 1 if hasattr(Trainer, "_get_grad_norm") else 0
        self._model, self._optimizer, self._scheduler = model, inner, scheduler
        self._accelerated, self._skipped = optimizer, False
        self._hook = _forward_hook(model, self._read_loss)
        self._stateful = hf_state.stateful_callbacks(trainer, self)
        self._books.begin(self.step - 1, state, self._stateful)  # the state this training starts from
        if trainer is not None:
            hf_evaluation.install(self, trainer)  # every training: one callback may go to a second Trainer
        if self.device_loss_filter:
            # Every training: one callback may be handed to a second Trainer, which needs its own.
            if trainer is None:
                if self.loss_filter is None:  # attach() did not hand it over either
                    self._say_the_filter(args, model)
            elif self.loss_filter is None or self.loss_filter.trainer is not trainer:
                self.loss_filter = LossFilter.install(trainer)

    def _resume_cut(self, state, carried=None):
        """Resuming (resume_from_checkpoint): the optimizer.pt/scheduler.pt the Trainer just loaded carry
        the cut in force when they were saved; the guard learns it, or a later rollback's cut would be
        applied on top of it (and checkpoints saved from here registered as uncut). ``carried``: the cut
        of the attempt a batch-size retry goes on from, which the optimizer's rates (and the new
        scheduler built on them) carry."""
        cut = hf_state.saved_cut(state.stateful_callbacks)
        cut = carried if cut is None and carried not in (None, 1.0) else cut
        if cut is not None:
            self.guard.recovery.lr.resumed_at(cut)
        self._record_cut(state)

    def _record_cut(self, state):
        """Keeps the cut in force in the TrainerState, which every checkpoint saves (trainer_state.json)."""
        if not isinstance(state.stateful_callbacks, dict):
            state.stateful_callbacks = {}
        scale = float(self.guard.recovery.lr.scale)
        if hf_state.saved_cut(state.stateful_callbacks) != scale:  # every step: written only when it changed
            state.stateful_callbacks[hf_state.STATE_KEY] = {"lr_scale": scale}

    def _say_the_filter(self, args, model):
        """No Trainer found to take the filter over (a Trainer subclass that fires its events from
        elsewhere): said once, on a GPU, where the host read costs."""
        if self._filter_said or not getattr(args, "logging_nan_inf_filter", False):
            return
        self._filter_said = True
        first = next(iter(model.parameters()), None)
        if first is not None and first.device.type == "cuda":
            log.info("trainguard: the Trainer reads every step's loss on the host for its NaN filter "
                     "(logging_nan_inf_filter), so the GPU idles after each backward, and this callback "
                     "did not find the Trainer that runs it to do that check on the device; "
                     "TrainguardCallback(...).attach(trainer) hands it over")

    def on_step_begin(self, args, state, control, **kwargs):
        self._cycle.reset()  # the Trainer calls it before each accumulation cycle's first micro-batch

    def _read_loss(self, module, inputs, kwargs, output):
        if not module.training:
            return
        loss = model_loss(output)
        # No loss in the output (label smoothing, a compute_loss of the user's): the Trainer computes
        # it from the logits, so their backward still arms the measurement, judged without a loss.
        anchor = loss if loss is not None else next(iter(grad_tensors(output)), None)  # the logits
        if anchor is None:
            return
        self._cycle.add(loss, normalised=bool(kwargs) and kwargs.get("num_items_in_batch") is not None)
        if not _sync_gradients():  # an earlier micro-batch: its backward lets the held report go
            if self.measure_at_backward:
                self.guard.backward_gate.release_on(anchor)
            return
        # The micro-batch whose backward ends before the optimizer step: the cycle's loss is complete.
        self._loss = self._cycle.value()
        if self.measure_at_backward:
            # Without the device filter, the Trainer reads the loss on the host (its NaN filter) between
            # backward and on_pre_optimizer_step: measure and gate before that read (backward_gate).
            # With it, nothing waits there, and the gate is launched while backward's are queued.
            # The hook sits on this micro-batch's loss (or logits); the cycle's loss is measured.
            self.guard.gate_on_backward(self._loss, anchor)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        loss, self._loss = self._loss, None
        self._cycle.reset()
        # The last step's evaluations and saves are done (the Trainer runs them after on_step_end): its
        # best-model record is complete, and this step's verdict may roll back to it.
        self._books.note(self.step - 1, state, self._stateful)
        self._restored_folder = None
        v = self.guard.step(self.step, loss)
        self.verdicts.extend(self.guard.gated.late.take())  # skips the device made, learned since
        if v.action.name != "APPLY":
            self.verdicts.append((self.step, v.action.name, list(v.reasons)))
        if v.action.name == "ROLLBACK" and v.resume_step is not None:
            # Snapshot or checkpoint folder alike: the Trainer's record of its best model and early
            # stopping's patience go back to the restored step's (hf_state.TrainerBooks).
            self._books.rewind(v.resume_step - 1, state, self._stateful, self._restored_folder)
        self._skipped = not v.should_step
        self.step = v.resume_step if v.resume_step is not None else self.step + 1

    def on_step_end(self, args, state, control, **kwargs):
        self._record_cut(state)  # a rollback or a lifted cut changed it; the step's save comes after this

    def on_optimizer_step(self, args, state, control, **kwargs):
        # The Trainer steps its LR scheduler unless Accelerate says the update was skipped (a
        # GradScaler overflow): a step the guard skipped on the host reads as one too, so the
        # schedule does not advance past updates that did not happen. Without a GradScaler Accelerate
        # never sets the flag itself. A skip decided on the device gate is learned a step or more
        # later, after the schedule advanced on it: the next scheduler step is left out for it.
        acc = self._accelerated
        skip_schedule = self._skipped or self.guard.gated.late.pay()
        if getattr(acc, "scaler", None) is None:
            acc._is_overflow = skip_schedule
        elif skip_schedule:
            acc._is_overflow = True
        self._skipped = False

    def on_save(self, args, state, control, **kwargs):
        hf_checkpoint.register_save(self.guard, self.step - 1, args, state)  # the last step whose update is in it

    def _restore(self, target, plan):
        """The guard's restore_hook: loads the Trainer checkpoint folder the plan names (hf_checkpoint);
        the best-model record is rewound once the rollback is applied (on_pre_optimizer_step)."""
        path = hf_checkpoint.folder_of(target)
        hf_checkpoint.restore(path, self._model, self._optimizer, self._scheduler, self.guard.scaler,
                              plan.checkpoint_step)
        self._restored_folder = path  # read where this training kept no record of the step (TrainerBooks)
        # The cut its optimizer/scheduler state carries: it may have been saved by an earlier process,
        # whose registration this guard never saw (rollback.py takes it over the registered one).
        cut = hf_state.checkpoint_cut(path)
        return {"lr_scale": cut} if cut is not None else None

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
        if self.guard is not None:
            self.guard.close()
            self.verdicts.extend(self.guard.gated.late.take())
