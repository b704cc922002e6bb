"""The integrations on CUDA, against the sidecar that bench/gpu/sidecar-up.sh started (the real one,
``$TG_TARGET``, default unix:///tmp/tg.sock): a NaN step skipped on the device gate is learned on the
host from a CUDA event a step or more later (late_skips), so the LR schedule is held back once and the
callbacks list the skip; a guarded Trainer (``callbacks=[...]`` or ``TrainguardCallback.attach``)
reads no loss on the host and updates bit for bit as the stock one; Lightning's 16-mixed (a CUDA
GradScaler) and bf16-mixed on the device gate.
CI runs the same paths on the CPU (tests/test_late_skips.py, test_hf.py, test_lightning.py), where
there is no event to wait for."""
import os
import time

import pytest
import torch

from trainguard.guard import Guard
from models import MLP, batch, trainer_isnan_calls, weights_finite

TARGET = os.environ.get("TG_TARGET", "unix:///tmp/tg.sock")
NAN_STEP, STEPS = 5, 20


def run_id(name):
    return f"{name}-{int(time.time() * 1000)}"  # a fresh run per call: the sidecar outlives the checks


def nan_activation(module, at):
    """A forward hook that makes ``module``'s output NaN at its ``at``-th call in training mode."""
    calls = [0]

    def hook(mod, inp, out):
        if not mod.training:
            return None
        i, calls[0] = calls[0], calls[0] + 1
        return out * float("nan") if i == at else None
    return module.register_forward_hook(hook)


def test_a_skip_on_the_cuda_gate_is_learned_later_and_holds_the_wrapped_scheduler_back_once():
    torch.manual_seed(0)
    model = MLP().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = Guard(model, opt, run_id("cuda-late-skip"), target=TARGET, device_gate=True, deadline=5.0, replay=False)
    gopt = g.wrap(opt)
    sched = g.wrap(torch.optim.lr_scheduler.LambdaLR(gopt, lambda k: 1.0 / (1 + k)))
    nan_activation(model.blocks[0], NAN_STEP)
    for step in range(STEPS):
        x, y = (t.cuda() for t in batch(step))
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        before = [p.detach().clone() for p in model.parameters()] if step == NAN_STEP else None
        assert g.step(step, loss).device_gated
        gopt.step()
        sched.step()
        gopt.zero_grad(set_to_none=True)
        assert weights_finite(model)
        if before is not None:
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    g.close()
    assert g.counters["skips"] == 1 and g.counters["device_gated_steps"] == STEPS
    assert sched.last_epoch == STEPS - 1


def tiny_gpt2():
    import transformers
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32,
                                                                n_layer=2, n_head=2))


def trainer_on_cuda(tmp_path, name, callbacks=(), **overrides):
    """A tiny GPT-2's Trainer on CUDA: fused AdamW, the Trainer's default max_grad_norm (1.0) and NaN filter."""
    import transformers
    rows = torch.randint(0, 64, (64, 16), generator=torch.Generator().manual_seed(1))
    kw = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=4, max_steps=12, learning_rate=1e-3,
              save_strategy="no", report_to=[], optim="adamw_torch_fused", disable_tqdm=True, logging_steps=2)
    kw.update(overrides)
    return transformers.Trainer(model=tiny_gpt2(), args=transformers.TrainingArguments(**kw),
                                train_dataset=[{"input_ids": r, "labels": r} for r in rows], callbacks=list(callbacks))


def test_hf_trainer_on_cuda_lists_the_devices_skip_and_holds_its_schedule_back(tmp_path):
    from trainguard.hf import TrainguardCallback
    tg = TrainguardCallback(run_id("cuda-hf-late-skip"), target=TARGET, deadline=5.0)
    trainer = trainer_on_cuda(tmp_path, "late-skip", [tg], max_grad_norm=0.0, logging_steps=1000)
    model = trainer.model
    nan_activation(model.lm_head, NAN_STEP)
    trainer.train()
    assert tg.guard.counters["device_gated_steps"] >= 10 and tg.guard.counters["skips"] == 1
    # lm_head's NAN_STEP-th call: on a host with several GPUs the Trainer runs nn.DataParallel, whose
    # n_gpu replicas each call it once a step (the guard then judges without their loss: trainguard.hooks)
    assert [(s, a) for s, a, _ in tg.verdicts] == [(NAN_STEP // trainer.args.n_gpu, "SKIP")], tg.verdicts
    assert trainer.lr_scheduler.last_epoch == 11
    assert weights_finite(model)


@pytest.mark.parametrize("form", ["attach", "callbacks"])
@pytest.mark.parametrize("nan", [False, True], ids=["healthy", "nan-step"])
def test_a_guarded_hf_trainer_on_cuda_reads_no_loss_on_the_host_and_updates_as_the_stock_one(
        tmp_path, monkeypatch, nan, form):
    from trainguard.hf import TrainguardCallback
    reads = trainer_isnan_calls(monkeypatch)
    tg = TrainguardCallback(run_id(f"cuda-hf-{form}"), target=TARGET, deadline=5.0)
    trainer = trainer_on_cuda(tmp_path, form, [tg] if form == "callbacks" else [])
    if nan:
        nan_activation(trainer.model.lm_head, NAN_STEP)
    if form == "attach":
        tg.attach(trainer)
    trainer.train()
    assert reads == [] and tg.loss_filter.counters["on_device"] == 12
    gate = tg.guard.backward_gate.counters
    # Every step measured at backward's end but one: the sidecar's local bounds from the first 7 values
    # hold only until its bound changes rule at the 8th, and the verdict that brings the next bounds is
    # held until the next backward, so step 8 is decided on the host (a spike bound of step 2 must not
    # judge step 10: LevelsAndLocalBoundsTest.localBoundsLastOnlyUntilTheirRuleChanges...)
    assert gate["measured"] >= 11 and gate["used"] + gate["stale"] == gate["measured"], gate
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 6 and all(x == x for x in logged), logged
    assert weights_finite(trainer.model)
    if nan:
        assert [(s, a) for s, a, _ in tg.verdicts] == [(NAN_STEP // trainer.args.n_gpu, "SKIP")], tg.verdicts
        return
    assert tg.verdicts == []
    stock = trainer_on_cuda(tmp_path, "stock")
    stock.train()
    assert len(reads) == 12  # the stock Trainer's own filter: a host read per step
    assert all(torch.equal(a, b) for a, b in zip(stock.model.parameters(), trainer.model.parameters()))
    assert [h["loss"] for h in stock.state.log_history if "loss" in h] == logged


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_lightning_mixed_precision_on_cuda_skips_a_nan_step_on_the_device(precision):
    import lightning.pytorch as pl
    from test_lightning_sweep import Net  # a NaN loss at chosen training_step calls
    from trainguard.lightning import TrainguardCallback

    class Fused(Net):  # fused AdamW: the device gate
        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2, fused=True)

    class Checks(pl.Callback):
        def __init__(self):
            self.unchanged = []

        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.before = [p.detach().clone() for p in module.parameters()]

        def on_train_batch_end(self, trainer, module, outputs, b, i):
            assert weights_finite(module), f"non-finite weights after batch {i}"
            if all(torch.equal(a, p) for a, p in zip(self.before, module.parameters())):
                self.unchanged.append(i)

    model = Fused(nan_loss_at={NAN_STEP})
    tg = TrainguardCallback(run_id(f"cuda-lightning-{precision}"), target=TARGET, deadline=5.0)
    checks = Checks()
    trainer = pl.Trainer(max_steps=STEPS, accelerator="gpu", devices=1, precision=precision, callbacks=[tg, checks],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader([batch(i) for i in range(STEPS)],
                                                                     batch_size=None))
    assert tg.guard.device_gate and tg.guard.counters["device_gated_steps"] >= STEPS - 2
    assert NAN_STEP in checks.unchanged  # the NaN step's update never reached the weights
    assert tg.guard.counters["skips"] >= 1  # 16-mixed: the scaler's own overflows are counted too, not listed
    assert [(s, a) for s, a, _ in tg.verdicts] == [(NAN_STEP, "SKIP")], tg.verdicts


@pytest.mark.parametrize("fused", [True, False], ids=["device-gate", "host-path"])
def test_fp16_steps_judged_at_the_scalers_step_catch_a_nan_streak_on_cuda(fused):
    # timm's NativeScaler call form (backward, clip block, scaler.step in one call: no guard.step):
    # with a CUDA fp16 GradScaler the healthy steps match an unguarded run, and a NaN the model
    # makes step after step reaches the guard (skips, a rollback, then a halt), not the scaler alone.
    from trainguard.errors import TrainingHalted

    def run(guarded):
        torch.manual_seed(0)
        model = MLP().cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
        scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
        g = Guard(model, opt, run_id(f"cuda-scaler-{fused}"), target=TARGET, scaler=scaler, deadline=5.0,
                  device_gate=fused) if guarded else None
        stepped, weights, halted_at = (g.wrap(opt) if g else opt), [], None
        for step in range(30):
            x, y = (t.cuda() for t in batch(step))
            if step >= 10:
                x = x * float("nan")
            with torch.autocast("cuda", dtype=torch.float16):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.unscale_(stepped)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            try:
                scaler.step(stepped)
            except TrainingHalted:
                halted_at = step
                break
            scaler.update()
            opt.zero_grad(set_to_none=True)
            assert weights_finite(model), f"non-finite weights after step {step}"
            weights.append([p.detach().clone() for p in model.parameters()])
        if g is not None:
            g.close()
        return weights, halted_at, (dict(g.counters) if g else None)

    plain, never, _ = run(False)
    guarded, halted_at, c = run(True)
    assert never is None
    for step in range(10):
        assert all(torch.equal(a, b) for a, b in zip(guarded[step], plain[step])), f"step {step} differs"
    assert c["skips"] >= 3 and c["rollbacks"] >= 1 and halted_at is not None, (halted_at, c)
    if fused:
        assert c["device_gated_steps"] >= 10, c
