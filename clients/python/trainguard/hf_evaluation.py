"""The HF Trainer's evaluations, audited: ``trainer.evaluation_loop`` (which ``evaluate()`` and
``predict()`` run) wrapped so that a pass that writes into the model is caught and undone.

Inside a training the pass is the run's validation: BeginValidation / EndValidation with the
``eval_loss`` and the audit, numbered by the guard's step. The Trainer cannot be told not to evaluate,
so a pass the sidecar refuses (the warm-up) still runs, audited and restored in full
(``Guard.validation(runs_anyway=True)``). Outside a training (``trainer.evaluate()`` before
``train()`` or after it) there is no run to report to: the pass is audited and restored locally
(``AuditedOutsideRun``), so training never starts from weights an evaluation damaged."""
from .validation import AuditedOutsideRun


def install(callback, trainer):
    """Wraps ``trainer.evaluation_loop`` once per callback (a no-op when it is wrapped already)."""
    present = getattr(trainer, "evaluation_loop", None)
    if present is None or _audited_by(present, callback):
        return

    def evaluation_loop(*args, **kwargs):
        g = callback.guard
        if g is None or g._closed:
            with AuditedOutsideRun(trainer.model, "the Trainer's evaluation (outside train())"):
                return _modes_kept(trainer.model, present, args, kwargs)
        with g.validation(trainer.model, step=callback.step, runs_anyway=True) as v:
            out = _modes_kept(trainer.model, present, args, kwargs)
            v.loss = _eval_loss(out)
        return out

    evaluation_loop.trainguard_audited_by = callback
    evaluation_loop.trainguard_inner = present
    trainer.evaluation_loop = evaluation_loop


def _modes_kept(model, loop, args, kwargs):
    """Runs the loop and puts every module's train/eval mode back: the Trainer's own ``model.eval()``,
    which its next training step undoes anyway (``model.train()``), is not a change of the model."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        return loop(*args, **kwargs)
    finally:
        for m, training in modes:
            m.training = training


def _audited_by(fn, callback):
    """Whether ``fn`` or a function it wraps (the loss filter wraps it too) is this callback's audit."""
    for _ in range(8):
        if getattr(fn, "trainguard_audited_by", None) is callback:
            return True
        fn = getattr(fn, "trainguard_inner", None)
        if fn is None:
            return False
    return False


def _eval_loss(out):
    """The pass's loss from its metrics (``eval_loss``, or ``<prefix>_loss``), else 0.0 (none computed)."""
    metrics = getattr(out, "metrics", None) or {}
    for key, value in metrics.items():
        if key.endswith("_loss"):
            try:
                return float(value)
            except (TypeError, ValueError):
                return 0.0
    return 0.0
