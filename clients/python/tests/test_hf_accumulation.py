"""trainguard.hf under gradient accumulation, against the real sidecar jar: the loss the guard judges
for a step is the whole accumulation cycle's, as the Trainer logs it (not the last micro-batch's), on
the host path and on the device gate (measured at backward's end), so a loss spike in the cycle's
first micro-batch is skipped. A tiny GPT-2 from a config (no hub), CPU only. Skipped where
transformers is missing (the Debian stack), like test_hf.py."""
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from models import weights_finite  # noqa: E402
from test_hf import fused_cpu_args, tiny_gpt2, token_rows  # noqa: E402
from sidecar_fixture import reported_losses  # noqa: E402

POLICY = {"known_good_healthy_steps": 3, "spike_warmup_steps": 8}
ACCUM = 4


class CycleLossTrainer(transformers.Trainer):
    """Records, per optimizer step, what the Trainer adds to the loss it logs: the sum of its
    micro-batches' ``training_step`` losses (each already divided for the accumulation)."""

    def __init__(self, *args, normalised=True, **kwargs):
        super().__init__(*args, **kwargs)
        # False: the model's forward gets no num_items_in_batch (a model that takes no loss kwargs),
        # so its loss is a per-micro-batch mean that the Trainer divides by the accumulation steps
        self.model_accepts_loss_kwargs = normalised
        self.cycle_loss = {}

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        step = self.state.global_step
        self.cycle_loss[step] = self.cycle_loss.get(step, 0.0) + loss.item()
        return loss


class SpikeAt:
    """Forward hook on the LM head: logits scaled up (a loss spike) at one training forward."""

    def __init__(self, forward, factor=1e3):
        self.forward, self.factor, self.calls = forward, factor, 0

    def __call__(self, module, inputs, output):
        if not module.training:
            return None
        i, self.calls = self.calls, self.calls + 1
        return output * self.factor if i == self.forward else None


class UpdateWatch(transformers.TrainerCallback):
    """Per optimizer step (the Trainer's global_step before it): whether any weight changed."""

    def __init__(self):
        self.changed, self.before = {}, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.before = [p.detach().clone() for p in model.parameters()]

    def on_step_end(self, args, state, control, model=None, **kw):
        self.changed[state.global_step - 1] = not all(torch.equal(a, b) for a, b in zip(self.before, model.parameters()))
        assert weights_finite(model), f"non-finite weights after step {state.global_step}"


def train_accumulating(sidecar, name, normalised=True, spike_forward=None, max_steps=16, **guard_kwargs):
    """A Trainer with ``ACCUM`` micro-batches per step, guarded; returns (callback, trainer, watch)."""
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    if spike_forward is not None:
        model.lm_head.register_forward_hook(SpikeAt(spike_forward))
    tg = TrainguardCallback(f"{name}-{time.time_ns()}", target=sidecar.target, deadline=5.0, policy=POLICY,
                            **guard_kwargs)
    watch = UpdateWatch()
    optim = "adamw_torch_fused" if guard_kwargs.get("device_gate") else "adamw_torch"
    args = fused_cpu_args(sidecar, name, max_steps=max_steps, per_device_train_batch_size=2,
                          gradient_accumulation_steps=ACCUM, max_grad_norm=1.0, optim=optim)
    trainer = CycleLossTrainer(model=model, args=args, train_dataset=token_rows(2 * ACCUM * max_steps),
                               callbacks=[tg, watch], normalised=normalised)
    trainer.train()
    return tg, trainer, watch


def assert_reports_the_trainers_cycle_loss(sidecar, tg, trainer):
    steps = len(trainer.cycle_loss)
    reported = reported_losses(sidecar, tg.run, steps)
    assert sorted(reported) == sorted(trainer.cycle_loss), (reported, trainer.cycle_loss)
    for step, loss in trainer.cycle_loss.items():
        assert reported[step] == pytest.approx(loss, rel=1e-5), (step, reported[step], loss)


@pytest.mark.parametrize("normalised", [True, False], ids=["num_items_in_batch", "mean"])
def test_a_loss_spike_in_the_first_micro_batch_of_a_cycle_is_judged_and_skipped(sidecar, normalised):
    # Prevents: the guard judging only the cycle's last micro-batch's output.loss (with
    # num_items_in_batch a quarter of the loss), so a spike in micro-batch 0 was never seen, and the
    # Trainer's clip hid its gradients: the spiked update was applied.
    spike_step = 11
    tg, trainer, watch = train_accumulating(sidecar, f"hf-accum-spike-{normalised}", normalised=normalised,
                                            spike_forward=spike_step * ACCUM)
    assert_reports_the_trainers_cycle_loss(sidecar, tg, trainer)
    assert trainer.cycle_loss[spike_step] > 10 * trainer.cycle_loss[spike_step - 1]  # the spike is in the cycle's loss
    assert [(s, a) for s, a, _ in tg.verdicts] == [(spike_step, "SKIP")], tg.verdicts
    assert not watch.changed[spike_step] and all(c for s, c in watch.changed.items() if s != spike_step)
    kinds = {(i["kind"], i["step"]) for i in sidecar.run_info(tg.run)["incidents"]}
    assert ("LOSS_SPIKE", spike_step) in kinds, kinds


def test_on_the_device_gate_the_cycles_loss_is_measured_at_backward_end_and_used(sidecar):
    # Prevents: the early measurement staging the last micro-batch's loss, or the cycle's loss (a new
    # tensor, not the one whose backward arms the measurement) making every step re-measured at step()
    tg, trainer, _ = train_accumulating(sidecar, "hf-accum-gate", max_steps=6, device_gate=True)
    assert tg.guard.counters["device_gated_steps"] == 6
    assert tg.guard.backward_gate.counters == {"measured": 6, "used": 6, "stale": 0, "dropped": 0}
    assert_reports_the_trainers_cycle_loss(sidecar, tg, trainer)
    assert tg.guard.gated.last.host.tolist()[0] == pytest.approx(trainer.cycle_loss[5], rel=1e-5)
