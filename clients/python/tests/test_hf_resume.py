"""trainguard.hf across a crash and ``trainer.train(resume_from_checkpoint=True)`` against the real
sidecar jar: the LR cut a rollback wrote into the optimizer/scheduler state travels with the Trainer's
checkpoints, and the resumed process's guard measures a later cut from the uncut rate."""
import os
import time

import pytest
import transformers

from test_hf import tiny_gpt2, token_rows  # noqa: E402

POLICY = {"known_good_healthy_steps": 3, "spike_warmup_steps": 8, "rollback_rewarm_steps": 0}
LR = 1e-3


class Crash(Exception):
    """The first process dies here, after the Trainer saved checkpoints under the cut."""


class NanTrainer(transformers.Trainer):
    """A NaN loss at the global steps in ``burst``."""
    burst = set()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss * float("nan") if model.training and self.state.global_step in self.burst else loss


class Watch(transformers.TrainerCallback):
    """Records each step's LR and the guard's verdict; waits for a KNOWN_GOOD checkpoint before the
    burst (the rollback needs one); raises Crash at ``crash_at``."""

    def __init__(self, sidecar, tg, burst_from, crash_at=None):
        self.sidecar, self.tg, self.burst_from, self.crash_at = sidecar, tg, burst_from, crash_at
        self.lrs, self.rollbacks, self.registered = {}, [], {}

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        v = self.tg.guard.last_verdict
        if v is not None and v.action.name == "ROLLBACK" and v.rollback not in self.rollbacks:
            self.rollbacks.append(v.rollback)
        self.lrs[state.global_step] = optimizer.param_groups[0]["lr"]
        if state.global_step == self.burst_from - 1:
            self.registered = {s: e["lr_scale"] for s, e in self.tg.guard.checkpoints.items()}
            self._wait_known_good(state.global_step)
        if state.global_step == self.crash_at:
            raise Crash()

    def _wait_known_good(self, step):
        end, cps = time.monotonic() + 90, []
        while time.monotonic() < end:
            cps = self.sidecar.run_info(self.tg.run).get("checkpoints", [])
            if any(c["state"] == "KNOWN_GOOD" for c in cps):
                return
            time.sleep(0.2)
        pytest.fail(f"no checkpoint KNOWN_GOOD before step {step + 1}: {cps}")


def train(sidecar, run, out, burst, crash_at=None, resume=False):
    from trainguard.hf import TrainguardCallback
    tg = TrainguardCallback(run, target=sidecar.target, deadline=5.0, policy=POLICY)
    watch = Watch(sidecar, tg, min(burst), crash_at)
    args = transformers.TrainingArguments(output_dir=out, per_device_train_batch_size=4, lr_scheduler_type="constant",
                                          learning_rate=LR, max_steps=36, save_strategy="steps", save_steps=5,
                                          logging_steps=1000, report_to=[], use_cpu=True, max_grad_norm=0.0,
                                          dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch")
    NanTrainer.burst = burst
    trainer = NanTrainer(model=tiny_gpt2(), args=args, train_dataset=token_rows(400), callbacks=[tg, watch])
    try:
        trainer.train(resume_from_checkpoint=True if resume else None)
    except Crash:
        tg.guard.flush()
    return tg, watch


def test_a_rollback_after_resuming_cuts_from_the_uncut_rate_not_from_the_resumed_cut(sidecar):
    # Prevents: a resumed Trainer run whose guard started at the uncut rate although optimizer.pt/scheduler.pt
    # carried the first rollback's x0.5: the second rollback's x0.25 landed on top of it (x0.125, a cut on a
    # cut), and the checkpoints saved after the resume were registered as uncut.
    run = "hf-resume-cut"
    out = os.path.join(sidecar.checkpoint_root, run)
    tg1, w1 = train(sidecar, run, out, burst=set(range(10, 14)), crash_at=22)
    assert [p.lr_factor for p in w1.rollbacks] == [0.5], tg1.verdicts
    assert w1.lrs[22] == pytest.approx(LR * 0.5)

    tg2, w2 = train(sidecar, run, out, burst=set(range(28, 32)), resume=True)
    assert w2.rollbacks, f"no second rollback: {tg2.verdicts}"
    second = w2.rollbacks[0]
    assert second.lr_factor < 0.5, second
    assert w2.lrs[25] == pytest.approx(LR * 0.5), "the resumed run does not go on at the first cut"
    after = max(w2.lrs)
    assert w2.lrs[after] == pytest.approx(LR * second.lr_factor), (
        f"LR {w2.lrs[after]:.3g} after the second rollback, not x{second.lr_factor} of {LR}")
    assert tg2.guard.recovery.lr.scale == pytest.approx(second.lr_factor)
    assert w2.registered and set(w2.registered.values()) == {0.5}, f"saved after the resume: {w2.registered}"
