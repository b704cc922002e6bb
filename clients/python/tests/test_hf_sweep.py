"""Regressions found by the Hugging Face sweep (/tmp/sweep-hf/repro), against the real sidecar jar:
the device gate's replay classification of a batch whose input is bad, and the Trainer callback's
train() twice, resume numbering, rollback to the plan's own (and to a sharded) checkpoint, and an
evaluation forward between training steps. Tiny models from a config (no hub), CPU only. Skipped
where transformers is missing (the Debian stack), like test_hf.py."""
import glob
import os
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from models import weights_finite  # noqa: E402
from test_gated_replay import QUICK, make_fused, run_loop  # noqa: E402
from test_hf import fused_cpu_args, tiny_gpt2, token_rows  # noqa: E402
from trainguard.safetensors_io import read_safetensors  # noqa: E402

POLICY = {"known_good_healthy_steps": 3, "spike_warmup_steps": 8}


class NanAt:
    """Forward hook on a module: NaN output at the chosen training forwards (counted from 0)."""

    def __init__(self, at):
        self.at, self.calls = set(at), 0

    def __call__(self, module, inputs, output):
        if not module.training:
            return None
        i, self.calls = self.calls, self.calls + 1
        if i not in self.at:
            return None
        h = output[0] if isinstance(output, tuple) else output
        h = h * float("nan")
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h


def checkpoint_weights(path):
    """A Trainer checkpoint's weights: model.safetensors or all its model-0000k-of-0000n shards."""
    files = glob.glob(os.path.join(path, "model.safetensors")) or glob.glob(
        os.path.join(path, "model-*-of-*.safetensors"))
    assert files, f"no weights in {path}: {os.listdir(path)}"
    state = {}
    for f in sorted(files):
        state.update(read_safetensors(f))
    return state


def equals_checkpoint(model, path):
    saved, now = checkpoint_weights(path), model.state_dict()
    return all(torch.equal(saved[k], now[k]) for k in saved)


class RollbackSeen(transformers.TrainerCallback):
    """Records the first ROLLBACK: (the plan's checkpoint step, the plan's checkpoint folder, whether the
    weights right after it equal that folder's). Before the poison starts, waits until the sidecar has
    verified a checkpoint, so the burst has something to roll back to."""

    def __init__(self, tg, sidecar, poison, min_step=0):
        self.tg, self.sidecar, self.poison, self.min_step = tg, sidecar, poison, min_step
        self.seen = []

    def on_step_end(self, args, state, control, model=None, **kw):
        assert weights_finite(model), f"non-finite weights after step {state.global_step}"
        v = self.tg.guard.last_verdict
        if v is not None and v.action.name == "ROLLBACK" and not self.seen:
            files = list(v.rollback.files)
            plan_dir = files[0] if os.path.isdir(files[0]) else os.path.dirname(files[0])
            self.seen.append((v.rollback.checkpoint_step, plan_dir, equals_checkpoint(model, plan_dir)))
        if self.poison.calls == min(self.poison.at):
            end = time.monotonic() + 60
            cps = []
            while time.monotonic() < end:
                cps = self.sidecar.run_info(self.tg.run).get("checkpoints", [])
                if any(c["state"] == "KNOWN_GOOD" and c["step"] >= self.min_step for c in cps):
                    return
                time.sleep(0.1)
            pytest.fail(f"no checkpoint became KNOWN_GOOD: {cps}")


@pytest.mark.torch2  # fused AdamW on the CPU: torch >= 2.4
def test_a_batch_whose_input_is_nan_on_the_device_gate_is_deterministic_and_recorded_bad(sidecar):
    # Prevents: the gated fault's module quoted ("'inp'") but the replay's bare ("inp"), so a bad batch was UNSTABLE
    from trainguard.guard import Guard
    model, opt = make_fused()
    run = "hf-sweep-gated-input"
    g = Guard(model, opt, run, target=sidecar.target, device_gate=True, deadline=5.0, policy=QUICK)

    def poison(step, x, y):
        if step == 9:
            x = x.clone()
            x[0, 0] = float("nan")  # every replay of this batch makes the first watched module non-finite
        return x, y
    weights = {}
    torch.manual_seed(7)
    vs = run_loop(g, model, opt, 14, inject=poison, before=lambda s, w: weights.__setitem__(s, w))
    g.close()
    assert vs[9].device_gated and vs[9].fault_class == "DETERMINISTIC", (vs[9].fault_class, g.recovery.counters)
    assert g.is_bad_batch(9) and not g.is_bad_batch(8)
    assert g.recovery.counters["deterministic"] == 1 and g.recovery.counters.get("unstable", 0) == 0
    assert all(torch.equal(a, b) for a, b in zip(weights[9], weights[10]))  # step 9's update never happened
    msgs = [i["message"] for i in sidecar.run_info(run)["incidents"] if i["kind"] == "FAULT_REPLAYED"]
    assert any("DETERMINISTIC" in m and "data position 9" in m for m in msgs), msgs


def test_trainer_train_twice_with_one_callback_guards_the_second_as_a_new_run(sidecar):
    # Prevents: the second train() reopening the run the first closed (RunRefused out of trainer.train())
    from trainguard.hf import TrainguardCallback
    tg = TrainguardCallback("hf-sweep-twice", target=sidecar.target, deadline=5.0)
    trainer = transformers.Trainer(model=tiny_gpt2(), args=fused_cpu_args(sidecar, "hf-sweep-twice", max_steps=3,
                                                                          optim="adamw_torch"),
                                   train_dataset=token_rows(24), callbacks=[tg])
    trainer.train()
    first, first_guard = tg.run, tg.guard
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    second = tg.run
    # the second run's updates ran, and its guard wraps the optimizer itself, not the first run's
    # closed wrapper around it (which would obey the first guard's last verdict)
    from trainguard.wrap import GuardedOptimizer
    assert not all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert not isinstance(tg.guard.optimizer, GuardedOptimizer)
    assert second != first and tg.guard is not first_guard
    assert first_guard._closed and tg.guard._closed  # each train() closed its own run
    for run in (first, second):
        info = sidecar.run_info(run)
        assert info["run"]["lastStep"] == 2, (run, info["run"])
    assert tg.step == 3 and weights_finite(trainer.model)


class Crash(Exception):
    pass


def test_trainer_resumed_from_a_checkpoint_numbers_on_and_rolls_back_to_the_plans_own_checkpoint(sidecar):
    # Prevents: a resumed Trainer numbering its steps from 0 again, so a rollback restored another
    # checkpoint registered under the same step number (by the process before the crash)
    from trainguard.hf import TrainguardCallback
    run, out = "hf-sweep-resume", os.path.join(sidecar.checkpoint_root, "hf-sweep-resume")
    a = dict(save_strategy="steps", save_steps=5, max_steps=30, optim="adamw_torch", max_grad_norm=0.0)

    class CrashAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 12:
                raise Crash("simulated crash")
    tg1 = TrainguardCallback(run, target=sidecar.target, deadline=5.0, policy=POLICY)
    first = transformers.Trainer(model=tiny_gpt2(), args=fused_cpu_args(sidecar, "hf-sweep-resume", **a),
                                 train_dataset=token_rows(200), callbacks=[tg1, CrashAt()])
    with pytest.raises(Crash):
        first.train()
    tg1.guard.flush()  # the crashed process never closes its run: the restarted one resumes it
    assert sorted(d for d in os.listdir(out) if d.startswith("checkpoint-")) == ["checkpoint-10", "checkpoint-5"]

    # the restart: the same run id, resumed from checkpoint-10; a NaN burst at global steps 20..25
    # (training forwards 10..15 after the resume) forces a rollback
    model = tiny_gpt2()
    poison = NanAt(range(10, 16))
    model.lm_head.register_forward_hook(poison)
    tg2 = TrainguardCallback(run, target=sidecar.target, deadline=5.0, policy=POLICY)
    begin = {}

    class AtBegin(transformers.TrainerCallback):  # runs after tg2's on_train_begin
        def on_train_begin(self, args, state, control, **kw):
            begin["tg"], begin["trainer"] = tg2.step, state.global_step
    seen = RollbackSeen(tg2, sidecar, poison, min_step=14)  # the resumed process's checkpoint-15
    second = transformers.Trainer(model=model, args=fused_cpu_args(sidecar, "hf-sweep-resume", **a),
                                  train_dataset=token_rows(200), callbacks=[tg2, AtBegin(), seen])
    second.train(resume_from_checkpoint=True)
    assert begin == {"tg": 10, "trainer": 10}, begin
    assert tg2.run == run
    assert seen.seen, f"no ROLLBACK: {tg2.verdicts}"
    step, plan_dir, restored = seen.seen[0]
    # the plan's checkpoint is the folder the Trainer saved after that step, and its weights are restored
    assert os.path.dirname(plan_dir) == out and os.path.basename(plan_dir) == f"checkpoint-{step + 1}", seen.seen
    assert step >= 14, seen.seen  # a checkpoint of the resumed process (its numbering went on from 10)
    assert tg2.guard.checkpoints[step]["restore"] == plan_dir
    assert restored, f"the weights after the rollback are not those of {plan_dir}"
    assert weights_finite(model)


def test_rollback_to_a_trainer_checkpoint_saved_as_shards_restores_its_weights(sidecar, monkeypatch):
    # Prevents: a rollback reading only model.safetensors, so a sharded checkpoint (model-0000k-of-0000n) failed
    from trainguard.hf import TrainguardCallback
    save = transformers.PreTrainedModel.save_pretrained
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained",
                        lambda self, *a, **k: save(self, *a, **{**k, "max_shard_size": "40KB"}))
    model = tiny_gpt2()
    poison = NanAt(range(14, 20))
    model.lm_head.register_forward_hook(poison)
    tg = TrainguardCallback("hf-sweep-sharded", target=sidecar.target, deadline=5.0, policy=POLICY)
    seen = RollbackSeen(tg, sidecar, poison)
    args = fused_cpu_args(sidecar, "hf-sweep-sharded", max_steps=24, save_strategy="steps", save_steps=5,
                          optim="adamw_torch")  # safetensors: the Trainer's default (only format in v5)
    transformers.Trainer(model=model, args=args, train_dataset=token_rows(200), callbacks=[tg, seen]).train()
    shards = glob.glob(os.path.join(args.output_dir, "checkpoint-10", "model-*-of-*.safetensors"))
    assert len(shards) > 1, os.listdir(os.path.join(args.output_dir, "checkpoint-10"))  # really sharded
    assert tg.guard.counters["rollbacks"] >= 1 and seen.seen, tg.verdicts
    step, plan_dir, restored = seen.seen[0]
    assert glob.glob(os.path.join(plan_dir, "model-*-of-*.safetensors")), plan_dir
    assert restored, f"the weights after the rollback are not those of the shards in {plan_dir}"
    assert weights_finite(model)


def test_a_nan_in_a_trainer_evaluation_between_steps_does_not_skip_the_next_training_step(sidecar):
    # Prevents: an eval forward's non-finite output (eval_strategy="steps") judged as the next training step's
    from trainguard.hf import TrainguardCallback

    def eval_nan(module, inputs, output):
        return None if module.training else output * float("nan")
    model = tiny_gpt2()
    model.lm_head.register_forward_hook(eval_nan)
    tg = TrainguardCallback("hf-sweep-eval", target=sidecar.target, deadline=5.0, policy=POLICY)
    changed = {}

    class StepChanged(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            self.before = [p.detach().clone() for p in model.parameters()]

        def on_step_end(self, args, state, control, model=None, **kw):
            changed[state.global_step] = not all(torch.equal(a, b) for a, b in zip(self.before, model.parameters()))

    args = fused_cpu_args(sidecar, "hf-sweep-eval", max_steps=12, eval_strategy="steps", eval_steps=4,
                          per_device_eval_batch_size=4, optim="adamw_torch")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_rows(60),
                                   eval_dataset=token_rows(8), callbacks=[tg, StepChanged()])
    trainer.train()
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) >= 2 and all(e != e for e in evals), evals  # the evaluations did see NaN
    assert tg.verdicts == [] and tg.guard.counters["skips"] == 0, tg.verdicts
    assert sorted(changed) == list(range(1, 13)) and all(changed.values()), changed
    assert weights_finite(model)



def test_a_step_the_guard_skipped_does_not_advance_the_trainers_lr_schedule(sidecar):
    # Prevents: the Trainer stepping its scheduler after an update the guard skipped (it skips the
    # scheduler only for a GradScaler overflow), so the schedule ran ahead of the updates.
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    model.lm_head.register_forward_hook(NanAt({4}))
    tg = TrainguardCallback(f"hf-sweep-sched-{time.time_ns()}", target=sidecar.target, deadline=5.0,
                            device_gate=False)
    args = fused_cpu_args(sidecar, "hf-sweep-sched", max_steps=8, optim="adamw_torch",
                          lr_scheduler_type="linear")
    trainer = transformers.Trainer(model=model, args=args, train_dataset=token_rows(64), callbacks=[tg])
    trainer.train()
    assert tg.guard.counters["skips"] == 1, tg.verdicts
    scheduler = getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler)
    assert scheduler.last_epoch == 8 - 1  # one scheduler step per update that ran
    assert weights_finite(model)
