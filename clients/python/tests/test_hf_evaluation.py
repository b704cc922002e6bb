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


class RaiseOnce(transformers.TrainerCallback):
    def __init__(self, at):
        self.at, self.raised = at, False

    def on_step_begin(self, args, state, control, **kw):
        if state.global_step == self.at and not self.raised:
            self.raised = True
            raise KeyboardInterrupt  # a notebook's interrupt


def test_train_again_after_an_interrupted_train_closes_the_first_run_and_guards_every_update_once(sidecar, caplog):
    # Prevents: the first train()'s guard left open with its hooks, the sidecar showing that run HEALTHY for
    # ever, a warning that it "was closed", and one saying the second train()'s updates were not guarded
    from trainguard.hf import TrainguardCallback
    run = f"hf-interrupted-{time.time_ns()}"
    tg = TrainguardCallback(run, target=sidecar.target, deadline=5.0)
    model = tiny_gpt2()
    trainer = transformers.Trainer(model=model, args=fused_cpu_args(sidecar, "hf-interrupted", max_steps=6),
                                   train_dataset=token_rows(24), callbacks=[tg, RaiseOnce(3)])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        trainer.train()
    first, second = sidecar.run_info(run)["run"], sidecar.run_info(f"{run}-2")["run"]
    assert first["state"] == "CLOSED" and "exception" in first["stateReason"], first
    assert second["state"] == "CLOSED" and second["lastStep"] == 5, second
    said = [r.getMessage() for r in caplog.records]
    assert any("ended by an exception and is closed now" in m for m in said), said
    assert not any("not guarded" in m for m in said), said


class BestRecordAtRollback(transformers.TrainerCallback):
    """Waits for a known-good checkpoint before the burst; records (rollback target folder, best checkpoint
    right after the rollback)."""

    def __init__(self, tg, sidecar, burst_at, stop):
        self.tg, self.sidecar, self.burst_at, self.stop, self.seen = tg, sidecar, burst_at, stop, []

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.burst_at:
            end = time.monotonic() + 60
            while time.monotonic() < end and not any(
                    c["state"] == "KNOWN_GOOD" and c["step"] >= 0
                    for c in self.sidecar.run_info(self.tg.run).get("checkpoints", [])):
                time.sleep(0.1)
        v = self.tg.guard.last_verdict
        if v is not None and v.action.name == "ROLLBACK" and not self.seen:
            self.seen.append((v.rollback.files[0], state.best_model_checkpoint, state.best_metric,
                              self.stop.early_stopping_patience_counter))


def test_a_rollback_rewinds_the_trainers_best_model_record_and_early_stopping_patience(sidecar):
    # prevents: best_model_checkpoint left at a checkpoint of the abandoned steps (load_best_model_at_end then
    # loaded it at the end, undoing the rollback) and EarlyStopping counting their evaluations
    from test_hf_sweep import NanAt
    from trainguard.hf import TrainguardCallback
    import json
    import os
    model = tiny_gpt2()
    model.lm_head.register_forward_hook(NanAt(range(14, 20)))  # 4 NaN steps: ROLLBACK
    tg = TrainguardCallback(f"hf-best-rewind-{time.time_ns()}", target=sidecar.target, deadline=5.0,
                            policy={"known_good_healthy_steps": 3})
    stop = transformers.EarlyStoppingCallback(early_stopping_patience=100)  # counts, never stops this run
    seen = BestRecordAtRollback(tg, sidecar, 14, stop)
    args = fused_cpu_args(sidecar, f"hf-best-rewind-{time.time_ns()}", max_steps=40, optim="adamw_torch",
                          learning_rate=3e-3, save_strategy="steps", save_steps=4, eval_strategy="steps", eval_steps=4,
                          load_best_model_at_end=True, metric_for_best_model="eval_loss")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_rows(200), eval_dataset=token_rows(16),
                                   callbacks=[tg, seen, stop])
    trainer.train()
    assert seen.seen, ([(s, a) for s, a, _ in tg.verdicts], [(c["step"], c["state"]) for c in sidecar.run_info(tg.run)["checkpoints"]])
    target, best, best_metric, patience_used = seen.seen[0]
    folder = target if os.path.isdir(target) else os.path.dirname(target)
    with open(os.path.join(folder, "trainer_state.json")) as f:
        saved = json.load(f)
    assert (best, best_metric) == (saved["best_model_checkpoint"], saved["best_metric"])
    counted = saved["stateful_callbacks"]["EarlyStoppingCallback"]["attributes"]["early_stopping_patience_counter"]
    assert patience_used == counted, "early stopping kept counting the abandoned steps' evaluations"
