"""Regressions found by the eighth Hugging Face sweep (/tmp/sweep8/hf), against the real sidecar jar: a
rollback to an in-memory snapshot rewinds the Trainer's best-model record and early stopping's
patience; the loss of a model returning a tuple is judged; and the Trainer's retry at a smaller batch
(auto_find_batch_size) goes on with the same run. Tiny models from a config (no hub), CPU only. Skipped
where transformers is missing (the Debian stack), like test_hf.py."""
import logging
import os
import time
import urllib.error

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from models import weights_finite  # noqa: E402
from test_hf import fused_cpu_args, tiny_gpt2, token_rows  # noqa: E402
from test_hf_sweep import NanAt, checkpoint_weights  # noqa: E402

POLICY = {"known_good_healthy_steps": 3, "spike_warmup_steps": 8}


def equal_weights(model, saved):
    now = model.state_dict()
    return all(torch.equal(saved[k], now[k]) for k in saved)


class BestAtRollback(transformers.TrainerCallback):
    """Placed after EarlyStopping: records its patience counter at every evaluation; before the NaN burst
    waits for a known-good in-memory snapshot of step ``min_step`` or later (the rollback's target); at
    the first ROLLBACK records the plan and the Trainer's best-model record."""

    def __init__(self, tg, sidecar, stop, burst_at, min_step):
        self.tg, self.sidecar, self.stop = tg, sidecar, stop
        self.burst_at, self.min_step = burst_at, min_step
        self.patience, self.seen = {}, None

    def on_evaluate(self, args, state, control, **kw):
        self.patience[state.global_step] = self.stop.early_stopping_patience_counter

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.burst_at:
            end = time.monotonic() + 60
            while time.monotonic() < end and not any(
                    c["state"] == "KNOWN_GOOD" and c["step"] >= self.min_step and c["files"][0].startswith("memory://")
                    for c in self.sidecar.run_info(self.tg.run).get("checkpoints", [])):
                time.sleep(0.1)
        v = self.tg.guard.last_verdict
        if v is not None and v.action.name == "ROLLBACK" and self.seen is None:
            abandoned = os.path.join(args.output_dir, f"checkpoint-{self.burst_at}")
            self.seen = dict(target=v.rollback.files[0], step=v.rollback.checkpoint_step,
                             best_step=state.best_global_step, best=state.best_model_checkpoint,
                             patience=self.stop.early_stopping_patience_counter,
                             abandoned=checkpoint_weights(abandoned))


def test_a_rollback_to_an_in_memory_snapshot_rewinds_the_trainers_best_model_record(sidecar, tmp_path):
    # prevents: a rollback to a memory:// snapshot leaving best_global_step/best_model_checkpoint at a step it
    # abandoned, so load_best_model_at_end loaded that step's checkpoint at the end (undoing the rollback),
    # and early stopping's patience counting the abandoned steps' evaluations
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    model.lm_head.register_forward_hook(NanAt(range(30, 36)))  # steps 31..36: skips, then a ROLLBACK
    tg = TrainguardCallback(f"hf-best-snapshot-{time.time_ns()}", target=sidecar.target, deadline=5.0,
                            policy=POLICY, snapshots={"interval": 2, "max_overhead": 0.0})
    stop = transformers.EarlyStoppingCallback(early_stopping_patience=100)  # counts, never stops this run
    seen = BestAtRollback(tg, sidecar, stop, burst_at=30, min_step=9)  # 9: the state the evaluation at 10 scored
    holder = {}

    def metrics(_):  # the best evaluation is step 30's, the last before the burst
        return {"score": 1.0 if holder["trainer"].state.global_step == 30 else 0.5}
    # The Trainer's folders outside the sidecar's checkpoint roots: refused as rollback targets, so the rollback
    # goes to a snapshot (the ring's pace decides which; the record expected is that step's)
    args = fused_cpu_args(sidecar, tg.run, output_dir=str(tmp_path), max_steps=50, optim="adamw_torch",
                          save_strategy="steps", save_steps=10,
                          eval_strategy="steps", eval_steps=10, load_best_model_at_end=True,
                          metric_for_best_model="score", greater_is_better=True, per_device_eval_batch_size=4)
    trainer = holder["trainer"] = transformers.Trainer(
        model=model, args=args, train_dataset=token_rows(200), eval_dataset=token_rows(8),
        compute_metrics=metrics, callbacks=[tg, stop, seen])
    trainer.train()

    assert seen.seen is not None, [(s, a) for s, a, _ in tg.verdicts]
    assert seen.seen["target"].startswith("memory://"), seen.seen["target"]
    restored_at = seen.seen["step"] + 1  # the Trainer's global_step of the snapshot (no rollback before it)
    assert 10 <= restored_at < 30, seen.seen["step"]
    # as the Trainer stood at the restored step: its evaluations at 10 (and 20) scored alike, 10 the best
    assert (seen.seen["best_step"], os.path.basename(seen.seen["best"] or "")) == (10, "checkpoint-10"), seen.seen
    last_evaluation = max(s for s in seen.patience if s <= restored_at)
    assert seen.seen["patience"] == seen.patience[last_evaluation], (restored_at, seen.seen["patience"], seen.patience)
    assert os.path.basename(trainer.state.best_model_checkpoint) == "checkpoint-10"
    assert not equal_weights(model, seen.seen["abandoned"]), "the end loaded the abandoned step's checkpoint"
    assert equal_weights(model, checkpoint_weights(os.path.join(args.output_dir, "checkpoint-10")))


class TupleNet(torch.nn.Module):
    """Returns ``(loss, logits)`` (or a list): the Trainer's convention for a model that is no
    PreTrainedModel; its compute_loss takes ``outputs[0]``. Its logits are x1000 at forward ``spike_at``."""

    def __init__(self, form, spike_at):
        super().__init__()
        torch.manual_seed(0)
        self.form, self.spike_at, self.calls = form, spike_at, 0
        self.emb = torch.nn.Embedding(64, 32)
        self.head = torch.nn.Linear(32, 64)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))
        if self.training:
            self.calls += 1
            logits = logits * 1000.0 if self.calls - 1 == self.spike_at else logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 64), labels.reshape(-1))
        return (loss, logits) if self.form == "tuple" else [loss, logits]


@pytest.mark.parametrize("form", ["tuple", "list"])
def test_the_loss_of_a_model_returning_a_tuple_is_judged_as_the_trainer_reads_it(sidecar, form):
    # prevents: a model returning (loss, logits) reported without a loss (only output.loss / dict["loss"] was
    # read), so its loss spike went unjudged: with the Trainer's max_grad_norm=1.0 the gradient norm the host
    # path judges is clipped, and the loss was the only sign
    from trainguard.hf import TrainguardCallback
    model = TupleNet(form, spike_at=12)
    tg = TrainguardCallback(f"hf-tuple-{form}-{time.time_ns()}", target=sidecar.target, deadline=5.0, mode="sync",
                            policy=POLICY)
    args = fused_cpu_args(sidecar, tg.run, max_steps=16, optim="adamw_torch", max_grad_norm=1.0)
    transformers.Trainer(model=model, args=args, train_dataset=token_rows(64), callbacks=[tg]).train()
    spikes = [i["step"] for i in sidecar.run_info(tg.run)["incidents"] if i["kind"] == "LOSS_SPIKE"]
    assert spikes == [12], sidecar.run_info(tg.run)["incidents"]
    assert [(s, a) for s, a, _ in tg.verdicts] == [(12, "SKIP")], tg.verdicts


class OutOfMemoryOnce:
    """Forward pre-hook: the CPU allocator's out-of-memory error at one training forward, once (what
    accelerate's find_executable_batch_size retries on)."""

    def __init__(self, at):
        self.at, self.calls = at, 0

    def __call__(self, module, inputs):
        if module.training:
            self.calls += 1
            if self.calls - 1 == self.at:
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                                   "you tried to allocate 1 bytes")


def test_the_trainers_batch_size_retry_goes_on_with_the_same_run_numbered_on(sidecar, caplog):
    # prevents: auto_find_batch_size's retry after an out-of-memory error read as train() "called again": the
    # user's one train() split over run X (closed "by an exception") and run X-2, the second numbered from 0
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    model.transformer.h[1].register_forward_pre_hook(OutOfMemoryOnce(3))  # steps 0-2 applied, then the error
    model.lm_head.register_forward_hook(NanAt({7}))  # the retry's 4th step: the run's step 3 + 4 = 7
    run = f"hf-auto-batch-{time.time_ns()}"
    tg = TrainguardCallback(run, target=sidecar.target, deadline=5.0)
    args = fused_cpu_args(sidecar, run, max_steps=10, optim="adamw_torch", auto_find_batch_size=True,
                          per_device_train_batch_size=8)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_rows(128), callbacks=[tg])
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        trainer.train()

    assert trainer._train_batch_size < 8  # the Trainer did retry at a smaller batch
    said = [r.getMessage() for r in caplog.records]
    assert not any("train() called again" in m for m in said), said
    assert any("retries its training loop at batch size" in m for m in said), said
    assert tg.run == run
    info = sidecar.run_info(run)
    assert info["run"]["state"] == "CLOSED" and info["run"]["lastStep"] == 12, info["run"]  # 3 + 10 steps
    assert [(s, a) for s, a, _ in tg.verdicts] == [(7, "SKIP")], tg.verdicts
    assert [i["step"] for i in info["incidents"] if i["kind"] == "NON_FINITE_MODULE"] == [7], info["incidents"]
    with pytest.raises(urllib.error.HTTPError):
        sidecar.run_info(f"{run}-2")
    assert weights_finite(model) and len(model.lm_head._forward_hooks) == 1  # the NaN hook alone: no guard's left
