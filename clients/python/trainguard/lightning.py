"""PyTorch Lightning integration: everything the plain client gives, as one Callback.

    from trainguard.lightning import TrainguardCallback
    trainer = lightning.Trainer(callbacks=[TrainguardCallback(run="my-run")], ...)

- every optimizer step is judged in ``on_before_optimizer_step`` (after the closure's backward,
  after a GradScaler's unscale_, before ``optimizer.step``): SKIP drops the gradients, so the torch
  optimizer (which skips parameters without a gradient) leaves weights and moments alone; CLIP
  scales them; HALT raises ``TrainingHalted``; ROLLBACK restores a checkpoint that Lightning's own
  ``ModelCheckpoint`` wrote (model, optimizers, LR schedulers, the AMP scaler) and re-numbers the
  guard's steps from the checkpoint's;
- checkpoints: every file a ``ModelCheckpoint`` writes is registered with the sidecar (a
  known-good candidate), which verifies Lightning's ``.ckpt`` as it is; ``weights_copy=True`` also
  writes the model's weights as ``<ckpt dir>/trainguard-step-N.safetensors`` (one extra write of
  the weights per checkpoint);
- validation: ``on_validation_start`` asks the sidecar; a refused pass runs no ``validation_step``
  (the loop only walks its data); an allowed pass is audited (parameters, buffers, modes, wiring,
  RNG) and, by default, what it changed is undone in ``on_validation_end``;
- ``state_dict()`` / ``load_state_dict()`` carry the guard's state in Lightning's checkpoints.

With ``gradient_clip_val`` set, the guard's clip is applied to the gradients in
``on_before_optimizer_step``, before Lightning's own clip, so the smaller threshold wins
(``clipping_configured``).
The loss comes from ``on_before_backward`` (the last micro-batch's, with gradient accumulation).
The LR scheduler still steps on a skipped step, as it does under a GradScaler overflow.
"""
import logging
import os

import torch

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    import pytorch_lightning as pl

from .guard import Guard
from .safetensors_io import write_safetensors
from .validation import ModelSnapshot
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")


class TrainguardCallback(pl.Callback):
    """Args: ``run`` (the run id), ``target`` (the sidecar; default $TRAINGUARD_TARGET), ``restore``
    (undo what an audited validation changed), ``weights_copy`` (True: also write the weights as
    safetensors next to each checkpoint; False, the default: not, Lightning's own files are registered),
    and any Guard keyword argument."""

    def __init__(self, run, target=None, restore=True, weights_copy=False, **guard_kwargs):
        super().__init__()
        self.run, self.target, self.restore = run, target, restore
        self.guard_kwargs = guard_kwargs
        # "auto" (the former default) meant no copy: Lightning's own .ckpt files are registered
        self.weights_copy = False if weights_copy == "auto" else bool(weights_copy)
        self.guard = None
        self.step = 0             # the guard's step: optimizer steps, re-numbered after a rollback
        self.verdicts = []        # (step, action name, reasons) of every verdict that was not APPLY
        self.validations = []     # (step, allowed, audit dict) of every validation pass
        self._loss = None
        self._saved_at = None     # (step, weights copy path) of the last on_save_checkpoint
        self._seen = set()
        self._val = None
        self._state = None

    # ------------------------------------------------------------------ setup

    def on_fit_start(self, trainer, pl_module):
        if len(trainer.optimizers) != 1:
            raise ValueError(f"TrainguardCallback guards one optimizer; this Trainer has {len(trainer.optimizers)} "
                             "(use trainguard.Guard directly in manual optimization)")
        opt = trainer.optimizers[0]
        configs = getattr(trainer, "lr_scheduler_configs", None) or []
        scheduler = configs[0].scheduler if configs else None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        kwargs = dict(self.guard_kwargs)
        kwargs.setdefault("framework", "lightning")
        kwargs.setdefault("clipping_configured", trainer.gradient_clip_val is not None)
        strategy = type(trainer.strategy).__name__.lower()
        kwargs.setdefault("grad_sync", "sharded" if ("fsdp" in strategy or "deepspeed" in strategy) else "replicated")
        self.guard = Guard(pl_module, opt, self.run, target=self.target, scheduler=scheduler, scaler=scaler,
                           **kwargs)
        self.guard.restore_hook = lambda path, plan: self._restore(trainer, pl_module, plan)
        if self._state is not None:
            self.guard.load_state_dict(self._state)
            self.step = self._state.get("callback_step", self.step)

    def on_fit_end(self, trainer, pl_module):
        self._register_new_checkpoints(trainer)
        if self.guard is not None:
            self.guard.close()

    def on_exception(self, trainer, pl_module, exception):
        if self.guard is not None:
            self.guard.close(reason=f"training stopped: {type(exception).__name__}: {exception}")

    # ------------------------------------------------------------------ per step

    def on_before_backward(self, trainer, pl_module, loss):
        self._loss = loss.detach()
        if self.guard.watch:  # training_step need not call the module's forward, whose end takes them
            self.guard.watch.settle()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._register_new_checkpoints(trainer)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        loss, self._loss = self._loss, None
        v = self.guard.step(self.step, loss)
        if v.action.name != "APPLY":
            self.verdicts.append((self.step, v.action.name, list(v.reasons)))
        self.step = v.resume_step if v.resume_step is not None else self.step + 1

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        step = self.step - 1  # the last step whose update is in the checkpoint
        path = None
        if self.weights_copy and trainer.is_global_zero and step >= 0:
            root = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
            os.makedirs(root, exist_ok=True)
            path = os.path.join(root, f"trainguard-step-{step:08d}.safetensors")
            write_safetensors(pl_module.state_dict(), path, metadata={"step": str(step), "run": self.run})
        self._saved_at = (step, path)

    def _register_new_checkpoints(self, trainer):
        if self.guard is None or self._saved_at is None:
            return
        paths = []
        for cb in getattr(trainer, "checkpoint_callbacks", []) or []:
            paths += list(getattr(cb, "best_k_models", {}) or {})
            paths += [getattr(cb, a, "") or "" for a in ("best_model_path", "last_model_path", "_last_checkpoint_saved")]
        new = [p for p in paths if p and p not in self._seen and os.path.isfile(p)]
        if not new:
            return
        self._seen.update(new)
        step, copy = self._saved_at
        if step in self.guard.checkpoints:
            return
        ckpt = new[-1]
        if copy is not None:
            self.guard.checkpoint_saved(copy, step, data_position=step + 1)
        elif trainer.is_global_zero:
            self.guard.checkpoint_saved(ckpt, step, data_position=step + 1)
        entry = self.guard.checkpoints.setdefault(step, {"dir": ckpt, "files": [ckpt], "checkpoint_id": "",
                                                         "data_position": step + 1})
        entry["restore"] = ckpt

    def _restore(self, trainer, pl_module, plan):
        entry = self.guard.checkpoints.get(plan.checkpoint_step, {})
        ckpt = entry.get("restore")
        if ckpt and os.path.isfile(ckpt):
            state = torch.load(ckpt, map_location=pl_module.device, weights_only=False)
            pl_module.load_state_dict(state["state_dict"])
            for opt, s in zip(trainer.optimizers, state.get("optimizer_states", [])):
                opt.load_state_dict(s)
            for cfg, s in zip(getattr(trainer, "lr_scheduler_configs", []) or [], state.get("lr_schedulers", [])):
                cfg.scheduler.load_state_dict(s)
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None and state.get("native_amp_scaling_state"):
                scaler.load_state_dict(state["native_amp_scaling_state"])
            log.warning("trainguard: restored Lightning checkpoint %s (step %d)", ckpt, plan.checkpoint_step)
            return
        files = plan.files or entry.get("files") or []
        weights = next((f for f in files if f.endswith(".safetensors") and os.path.isfile(f)), None)
        if weights is None:
            raise FileNotFoundError(f"rollback to step {plan.checkpoint_step}: neither the Lightning checkpoint "
                                    f"({ckpt}) nor a weights file is there any more")
        from .safetensors_io import read_safetensors
        pl_module.load_state_dict({k: v.to(pl_module.device) for k, v in read_safetensors(weights).items()})
        log.warning("trainguard: Lightning checkpoint %s is gone; restored the weights only from %s "
                    "(optimizer state kept)", ckpt, weights)

    # ------------------------------------------------------------------ validation

    def on_validation_start(self, trainer, pl_module):
        if trainer.sanity_checking or self.guard is None:
            return
        g = self.guard
        step = self.step  # optimizer steps done (Lightning's global_step unless a rollback re-numbered)
        g.flush(g.deadline)  # the sidecar judges validation on up-to-date state
        allowed, reason = True, ""
        try:
            r = g.transport.call("BeginValidation", pb.BeginValidationRequest(run_id=g.run, rank=g.rank, step=step))
            allowed, reason = r.allowed, r.reason
        except Exception as e:  # grpc.RpcError: fail-open validates with the audit on, closed raises
            g.connection.unreachable("BeginValidation", e)
        from . import distributed as dist_agree
        if dist_agree.is_initialized() and g.world_size > 1:
            allowed = dist_agree.all_true(allowed)
        if not allowed:
            # no veto hook in Lightning: the pass runs, its validation_step does nothing
            pl_module.__dict__["validation_step"] = lambda *a, **k: None
            self._val = (step, False, None)
            log.info("trainguard: validation at step %d refused by the sidecar: %s", step, reason)
            return
        ours = {h.id for h in g.watch._handles} if g.watch else set()
        if g.watch:
            g.watch.enabled = False
        self._val = (step, True, ModelSnapshot(pl_module, keep_values=self.restore, ignore_hooks=ours))

    def on_validation_end(self, trainer, pl_module):
        if self._val is None:
            return
        step, allowed, snap = self._val
        self._val = None
        g = self.guard
        if not allowed:
            pl_module.__dict__.pop("validation_step", None)
            self.validations.append((step, False, None))
            return
        if g.watch:
            g.watch.enabled = True
        p, d, w, r, details = snap.diff()
        changed = p or d or w or r
        restored = False
        if changed and self.restore:
            snap.restore()
            restored = True
        audit = {"parameters_changed": p, "dtype_device_mode_changed": d, "wiring_changed": w, "rng_changed": r,
                 "details": details, "restored": restored}
        self.validations.append((step, True, audit))
        metric = trainer.callback_metrics.get("val_loss")
        try:
            g.transport.call("EndValidation", pb.EndValidationRequest(
                run_id=g.run, rank=g.rank, step=step, validation_loss=float(metric) if metric is not None else 0.0,
                audit=pb.ValidationAudit(parameters_changed=p, dtype_device_mode_changed=d, wiring_changed=w,
                                         rng_changed=r, details=details[:64], restored=restored)))
        except Exception as e:
            g.connection.unreachable("EndValidation", e)
        if changed:
            g.counters["validation_incidents"] += 1
            log.warning("trainguard: validation changed the model (%s)%s", "; ".join(details[:8]),
                        ", undone" if restored else "")

    # ------------------------------------------------------------------ state

    def state_dict(self):
        if self.guard is None:
            return {}
        state = self.guard.state_dict()
        state["callback_step"] = self.step
        return state

    def load_state_dict(self, state_dict):
        self._state = dict(state_dict) if state_dict else None
