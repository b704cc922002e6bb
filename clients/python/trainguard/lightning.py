"""PyTorch Lightning integration: everything the plain client gives, as one Callback.

    from trainguard.lightning import TrainguardCallback
    trainer = lightning.Trainer(callbacks=[TrainguardCallback(run="my-run")], ...)

- every optimizer step is judged in ``on_before_optimizer_step`` (after the closure's backward,
  after a GradScaler's unscale_, before ``optimizer.step``): SKIP drops the gradients, so the torch
  optimizer (which skips parameters without a gradient) leaves weights and moments alone; CLIP
  scales them; HALT raises ``TrainingHalted``; ROLLBACK restores a checkpoint that Lightning's own
  ``ModelCheckpoint`` wrote (model, optimizers, LR schedulers, the AMP scaler) and re-numbers the
  guard's steps from the checkpoint's;
- an optimizer that evaluates the closure several times per step (LBFGS) reaches that hook after
  every evaluation: only the first of each ``optimizer.step()`` is judged, and an update a later one
  made non-finite is undone (lightning_closure.py), as ``guard.wrap(opt)`` does in a plain loop;
- the step-interval LR schedulers do not advance on a step the guard kept out, nor once for each
  skip the device gate made that is learned late (lightning_schedules.py), as ``guard.wrap(scheduler)``;
- checkpoints: the files a ``ModelCheckpoint`` save writes are registered with the sidecar (a
  known-good candidate), which verifies Lightning's ``.ckpt`` as it is, except its last checkpoint
  (``last.ckpt``), which later saves rewrite; a rollback loads a registered file only while it is
  still the one registered (lightning_checkpoints.py); ``weights_copy=True`` also writes the
  model's weights as ``<ckpt dir>/trainguard-step-N.safetensors`` (one extra write of the weights
  per checkpoint);
- validation: ``on_validation_start`` asks the sidecar; a refused pass runs no ``validation_step``
  (the loop only walks its data); an allowed pass is audited (parameters, buffers, modes, wiring,
  RNG) and, by default, what it changed is undone in ``on_validation_end``; so is Lightning's sanity
  check, which is no validation of the run (the sidecar is neither asked nor told);
- ``state_dict()`` / ``load_state_dict()`` carry the guard's state in Lightning's checkpoints.

With ``gradient_clip_val`` set, the guard's clip is applied to the gradients in
``on_before_optimizer_step``, before Lightning's own clip, so the smaller threshold wins
(``clipping_configured``).
The loss comes from ``on_before_backward``: with ``accumulate_grad_batches=N`` the mean of the
cycle's micro-batch losses as ``training_step`` returned them (Lightning backpropagates each / N,
and a GradScaler's times its scale).
The LR schedulers still step on a GradScaler's own overflow skip, as they do without a guard.
"""
import logging
import os

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl

from .errors import TrainguardError
from . import apply as apply_
from . import lightning_checkpoints as ckpts
from .guard import Guard
from .lifecycle import ends_the_run
from .lightning_closure import ClosureEvaluations
from .lightning_schedules import ScheduleHold
from .safetensors_io import write_safetensors
from .lightning_validation import ValidationAudits

log = logging.getLogger("trainguard")


class _Update:
    """The update under way, judged at the step's first closure evaluation: what runs around it."""

    def __init__(self, step, saved_lr, snap, closure):
        self.step, self.saved_lr, self.snap = step, saved_lr, snap
        self.closure = closure  # snap guards later closure evaluations only (apply.check_update)
        self.stepped = False    # the optimizer's step post-hook ran


class TrainguardCallback(ValidationAudits, pl.Callback):
    """Args: ``run`` (the run id), ``target`` (the sidecar; default $TRAINGUARD_TARGET), ``restore``
    (undo what an audited validation changed), ``weights_copy`` (True: also write the weights as
    safetensors next to each checkpoint; False, the default: not, Lightning's own files are registered),
    and any Guard keyword argument."""

    def __init__(self, run, target=None, restore=True, weights_copy=False, gate_validation=False, **guard_kwargs):
        super().__init__()
        self.run, self.target, self.restore = run, target, restore
        # False (default): Lightning's validation always runs (audited, restored); the sidecar's
        # refusal is logged. True: a refused pass runs no validation_step, so nothing is logged and
        # ModelCheckpoint/EarlyStopping/ReduceLROnPlateau(monitor=...) fail on the missing metric.
        self.gate_validation = bool(gate_validation)
        self._refusal_said = False
        self._refused_ckpt_said = False
        self.guard_kwargs = guard_kwargs
        # "auto" (the former default) meant no copy: Lightning's own .ckpt files are registered
        self.weights_copy = False if weights_copy == "auto" else bool(weights_copy)
        self.guard = None
        self.step = 0             # the guard's step: optimizer steps, re-numbered after a rollback
        self.verdicts = []        # (step, action name, reasons) of every verdict that was not APPLY
        self.validations = []     # (step, allowed, audit dict) of every validation pass
        self.sanity_check = None  # the audit dict of Lightning's sanity check (no validation of the run)
        self._loss_sum = None     # the losses training_step returned since the last judged step, summed
        self._loss_parts = 0      # ... and how many (micro-batches of an accumulation cycle)
        self._saved_at = None     # (step, weights copy path) of the last on_save_checkpoint not yet registered
        self._files_before = {}   # ModelCheckpoint's files just before that save (lightning_checkpoints.files_on_disk)
        self._no_target_said = False
        self._val = None
        self._state = None
        self._update = None       # the _Update under way
        self._evals = None        # the closure evaluations of the optimizer step under way (lightning_closure)
        self._schedule = ScheduleHold()  # leaves out the scheduler step a skipped update owes
        self._closed = False      # on_fit_end closed the guard's run (a closed run id cannot be reopened)
        self._outside = None      # the audit of a validate()/test()/predict() outside fit (AuditedOutsideRun)
        self._post_hook = None

    # ------------------------------------------------------------------ setup

    def on_fit_start(self, trainer, pl_module):
        if self._closed:
            raise ValueError(f"TrainguardCallback(run={self.run!r}) already guarded a fit, which closed run "
                             f"{self.run!r}; a closed run cannot be reopened: give this fit a new "
                             f"TrainguardCallback with a new run id (its state carries over through the checkpoint)")
        if len(trainer.optimizers) != 1:
            raise ValueError(f"TrainguardCallback guards one optimizer; this Trainer has {len(trainer.optimizers)} "
                             "(use trainguard.Guard directly in manual optimization)")
        opt = trainer.optimizers[0]
        configs = getattr(trainer, "lr_scheduler_configs", None) or []
        scheduler = configs[0].scheduler if configs else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        kwargs = dict(self.guard_kwargs)
        kwargs.setdefault("framework", "lightning")
        # fault replay needs guard.step(..., replay=fn), which Lightning's loop cannot pass: without
        # this every non-finite step warns "pass guard.step(..., replay=fn)", advice a Lightning user cannot follow
        kwargs.setdefault("replay", False)
        kwargs.setdefault("clipping_configured", trainer.gradient_clip_val is not None)
        strategy = type(trainer.strategy).__name__.lower()
        kwargs.setdefault("grad_sync", "sharded" if ("fsdp" in strategy or "deepspeed" in strategy) else "replicated")
        self.guard = Guard(pl_module, opt, self.run, target=self.target, scheduler=scheduler, scaler=scaler,
                           **kwargs)
        self.guard.restore_hook = lambda path, plan: ckpts.restore(self.guard, trainer, pl_module, plan, self)
        # Lightning calls optimizer.step() itself: the guard's before/after-update work (re-warm LR,
        # protect_update, in-memory snapshots) hangs on the optimizer's step hook and on_train_batch_end
        self._post_hook = opt.register_step_post_hook(self._after_optimizer_step)
        self._evals = ClosureEvaluations(opt)
        self._apply_state()
        ckpts.say_weights_only_no_target(trainer)

    def _apply_state(self):
        if self._state is not None:
            self.guard.load_state_dict(self._state)
            self.step = self._state.get("callback_step", self.step)

    def _unhook(self):
        if self._post_hook is not None:
            self._post_hook.remove()
            self._post_hook = None
        if self._evals is not None:
            self._evals.remove()
        self._schedule.disarm()

    def on_fit_end(self, trainer, pl_module):
        self._unhook()
        self._register_new_checkpoints(trainer)
        if self.guard is not None and not self._closed:
            self.guard.close()
            self._closed = True
            self.verdicts.extend(self.guard.gated.late.take())

    def on_exception(self, trainer, pl_module, exception):
        self._unhook()
        if self.guard is not None and not self._closed:
            self._closed = True
            self.guard.close(reason=f"training stopped: {type(exception).__name__}: {exception}",
                             close_run=ends_the_run(exception))

    # ------------------------------------------------------------------ per step

    def on_before_backward(self, trainer, pl_module, loss):
        # automatic optimization backpropagates training_step's loss / accumulate_grad_batches, once per
        # micro-batch: undone here, so the step is judged on the cycle's mean loss (a spike in any
        # micro-batch counts, not only the last one's, shrunk N times)
        part = loss.detach()
        n = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
        if n != 1:
            part = part.float() * n
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            # 16-mixed scales the loss before this hook; the scale tensor, not get_scale(): no device read
            part = part.float() / scaler._get_scale_async()
        self._loss_sum = part if self._loss_sum is None else self._loss_sum + part
        self._loss_parts += 1
        if self.guard.watch:  # training_step need not call the module's forward, whose end takes them
            self.guard.watch.settle()
            self.guard.watch.unit_backed()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._register_new_checkpoints(trainer)
        self._evals.reset()
        self.guard.running_stats.step_begins()  # what a skip puts back: training_step may not call forward
        if self.guard.watch:
            self.guard.watch.begin_unit()  # training_step may call a submodule, outside the module's forward

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.__dict__.pop("configure_gradient_clipping", None)
        self._schedule.disarm()  # Lightning stepped the batch's step-interval schedulers before this hook
        self._finish_update()  # after Lightning stepped the LR scheduler, as in guard.optimizer_step()

    def _after_optimizer_step(self, optimizer, args, kwargs):
        u, g = self._update, self.guard
        fresh = u is not None and not u.stepped
        if self._evals.step_ended(applied=u is not None) and not g.protect_update:
            g.protector.release()  # the optimizer evaluates its closure once: no copy is due any more
        if not fresh:
            return
        u.stepped = True
        apply_.put_lr_back(g, u.saved_lr)
        # protect_update: undoes a non-finite update and raises NonFiniteUpdate; the copy for a closure's
        # later evaluations: undoes it, counts a skip and trains on
        undone = apply_.check_update(g, u.step, u.snap, closure=u.closure)
        if undone:  # judged APPLY at its first evaluation, then kept out: listed as late skips are
            self.verdicts.append((u.step, "SKIP", [f"update undone: a later evaluation of the closure inside the "
                                                   f"optimizer step left {', '.join(undone[:3])} non-finite"]))

    def _cycle_loss(self):
        """The mean of the losses since the last judged step (None without a backward); starts the next cycle."""
        total, parts = self._loss_sum, self._loss_parts
        self._loss_sum, self._loss_parts = None, 0
        return total if parts <= 1 else total / parts

    def _finish_update(self):
        u, self._update = self._update, None
        if u is None:
            return
        if u.stepped:
            self.guard.recovery.after_update(u.step)
        else:  # the optimizer did not step after all (a GradScaler overflow)
            apply_.put_lr_back(self.guard, u.saved_lr)
            self.guard.recovery.after_no_update(u.step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self._evals.is_later_one():
            self._later_evaluation()
            return
        pl_module.__dict__.pop("configure_gradient_clipping", None)
        self._finish_update()
        g = self.guard
        if self._loss_parts == 0 and not apply_.gradients(optimizer):
            # training_step returned None (a dropped batch) or a manual step had no backward: nothing to
            # apply, and judging it would charge the dropped forward's NaN to the run (skips, a rollback)
            g.meter.take_watch()  # the dropped forward's statistics: not the next step's
            g.backward_gate.discard()
            return
        loss = self._cycle_loss()
        v = g.step(self.step, loss)
        self.verdicts.extend(g.gated.late.take())  # skips the device made, learned since
        g._pending_update = False  # the update is Lightning's: what guard.optimizer_step() does around it is here
        self._schedule.arm(trainer, pl_module, g, skipped=not v.should_step and not v.scaler_overflow)
        if v.should_step:
            closure = self._evals.protects()  # copied for the closure's later evaluations
            self._update = _Update(v.step, *apply_.begin_update(g, v, protect=closure), closure=closure)
        else:
            apply_.skipped_update(g, v)
            # SKIP/ROLLBACK left no gradients (None). Lightning clips right after this hook, and
            # torch's clip_grad_value_ (gradient_clip_algorithm="value", or a user's own
            # configure_gradient_clipping) raises on an empty list: no clip on this step.
            pl_module.__dict__["configure_gradient_clipping"] = lambda *a, **k: None
        if v.action.name != "APPLY":
            self.verdicts.append((self.step, v.action.name, list(v.reasons)))
        self.step = v.resume_step if v.resume_step is not None else self.step + 1

    def _later_evaluation(self):
        """A later evaluation of the closure inside the optimizer step under way (LBFGS' line search):
        no step of its own. Judged, it counted several guard steps per optimizer step, and a SKIP
        dropped the gradients in the middle of the line search, whose weights had already moved."""
        g = self.guard
        self._cycle_loss()  # its loss is not the next step's
        g.meter.take_watch()  # nor its module statistics
        g.backward_gate.discard()
        if self._update is None:
            # the step was kept out (SKIP, ROLLBACK) or had nothing to apply: so are the gradients this
            # evaluation made (an optimizer that re-evaluates after a first one without gradients
            # would otherwise apply them); Lightning's clip stays off (configure_gradient_clipping)
            apply_.drop_gradients(g.optimizer, g.model)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        step = self.step - 1  # the last step whose update is in the checkpoint
        if self._saved_at is None:  # the step's first save: what is on disk before it is not of this save
            self._files_before = ckpts.files_on_disk(trainer)
        path = None
        if self.weights_copy and trainer.is_global_zero and step >= 0:
            root = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
            os.makedirs(root, exist_ok=True)
            path = os.path.join(root, f"trainguard-step-{step:08d}.safetensors")
            write_safetensors(pl_module.state_dict(), path, metadata={"step": str(step), "run": self.run})
        self._saved_at = (step, path)

    def _register_new_checkpoints(self, trainer):
        """Registers the files the saves since the last batch wrote (after Lightning wrote them)."""
        if self.guard is None or self._saved_at is None:
            return
        (step, copy), self._saved_at = self._saved_at, None
        new = ckpts.written_since(trainer, self._files_before)
        if not new and copy is None:
            self._say_no_target(step)
            return
        if step in self.guard.checkpoints:
            return
        try:
            if copy is not None:
                self.guard.checkpoint_saved(copy, step, data_position=step + 1)
            elif trainer.is_global_zero:
                self.guard.checkpoint_saved(new if len(new) > 1 else new[0], step, data_position=step + 1)
        except TrainguardError as e:  # refused (outside trainguard.checkpoint.roots); unreachable is handled inside
            self._say_refused_checkpoint(step, copy or new[0], e)
            return
        if not new:
            return
        entry = self.guard.checkpoints.setdefault(step, {"dir": new[0], "files": list(new), "checkpoint_id": "",
                                                         "data_position": step + 1})
        entry["restore"] = new[0]
        # what the rollback checks the file against: a later save may rewrite it in place
        entry["identity"] = {p: ckpts.identity(p) for p in new}

    def _say_no_target(self, step):
        if self._no_target_said:
            return
        self._no_target_said = True
        log.info("trainguard: the save at step %d wrote no file a ModelCheckpoint keeps for that step (only its "
                 "last checkpoint, which later saves rewrite, or a file it does not name): no rollback target", step)

    def _say_refused_checkpoint(self, step, path, e):
        # checkpoint_saved already took the refused entry back (or put back the one it replaced)
        msg = (f"trainguard: the sidecar refused checkpoint {path} ({e}); Lightning's checkpoints are no rollback targets "
               f"until ModelCheckpoint(dirpath=...) lies under the sidecar's trainguard.checkpoint.roots")
        if self.guard.failure_mode == "closed":
            raise TrainguardError(msg) from None
        log.log(logging.DEBUG if self._refused_ckpt_said else logging.ERROR, msg)
        self._refused_ckpt_said = True

    # ------------------------------------------------------------------ state

    def state_dict(self):
        if self.guard is None:
            return {}
        state = self.guard.state_dict()
        state["callback_step"] = self.step
        return state

    def load_state_dict(self, state_dict):
        self._state = dict(state_dict) if state_dict else None
        if self.guard is not None:
            # FSDP, DeepSpeed and ModelParallel restore callbacks' state after on_fit_start, where the
            # guard is built: applied at once, before the first step (else a resumed run's LR cut,
            # already in its optimizer and scheduler state, was cut again at the next rollback)
            self._apply_state()

