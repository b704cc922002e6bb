"""The HF Trainer's evaluations audited (trainguard.hf_evaluation), against the real sidecar jar: an
evaluation that writes into the weights, during train() and in a trainer.evaluate() before it, is
undone and said. Tiny GPT-2 from a config, CPU. Skipped where transformers is missing (Debian)."""
import logging
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from test_hf import fused_cpu_args, tiny_gpt2, token_rows  # noqa: E402


class HarmfulEvaluation(transformers.Trainer):
    """An evaluation that scales a LayerNorm's weight at every batch (a buggy metric, a leftover in-place op)."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            model.transformer.ln_f.weight.mul_(1.5)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def train(sidecar, name, trainer_cls, callbacks, **args):
    model = tiny_gpt2()
    trainer = trainer_cls(model=model, args=fused_cpu_args(sidecar, name, **args), train_dataset=token_rows(32),
                          eval_dataset=token_rows(8), callbacks=callbacks)
    trainer.train()
    return trainer, model


def test_an_evaluation_that_writes_into_the_weights_during_training_is_undone_and_recorded(sidecar):
    from trainguard.hf import TrainguardCallback
    run = f"hf-harmful-eval-{time.time_ns()}"
    tg = TrainguardCallback(run, target=sidecar.target, deadline=5.0)
    steps = dict(max_steps=8, eval_strategy="steps", eval_steps=4)
    _, guarded = train(sidecar, "hf-harmful-eval", HarmfulEvaluation, [tg], **steps)
    _, clean = train(sidecar, "hf-clean-eval", transformers.Trainer, [], **steps)
    _, damaged = train(sidecar, "hf-damaged-eval", HarmfulEvaluation, [], **steps)

    assert not torch.equal(damaged.transformer.ln_f.weight, clean.transformer.ln_f.weight)
    for k, v in clean.state_dict().items():
        assert torch.equal(guarded.state_dict()[k], v), f"{k} differs from the run whose evaluation did no harm"
    mutations = [i for i in sidecar.run_info(run)["incidents"] if i["kind"] == "VALIDATION_MUTATION"]
    assert sorted(i["step"] for i in mutations) == [4, 8], sidecar.run_info(run)["incidents"]
    assert all("transformer.ln_f.weight values changed" in i["message"] and "train-mode" not in i["message"]
               for i in mutations), mutations
    assert tg.guard.counters["validation_incidents"] == 2


def test_an_evaluate_before_train_that_writes_into_the_weights_is_undone_and_said(sidecar, caplog):
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tg = TrainguardCallback(f"hf-evaluate-first-{time.time_ns()}", target=sidecar.target, deadline=5.0)
    trainer = HarmfulEvaluation(model=model, args=fused_cpu_args(sidecar, "hf-evaluate-first", max_steps=2),
                                train_dataset=token_rows(8), eval_dataset=token_rows(8), callbacks=[tg])
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), f"{k} kept the evaluation's damage"
    said = [r.getMessage() for r in caplog.records if "evaluation (outside train())" in r.getMessage()]
    assert len(said) == 1 and "transformer.ln_f.weight" in said[0] and "undone" in said[0], said
