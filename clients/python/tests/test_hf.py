"""trainguard.hf against the real sidecar jar: a tiny GPT-2 built from a config (no hub) trained by
the transformers Trainer on the CPU with injected NaN steps, a loss spike and a burst of NaNs that
ends in a rollback to a checkpoint the Trainer saved; and a plain Accelerate loop through the
optimizer wrapper. Weights are checked finite after every step. Skipped without transformers /
accelerate (the Debian stack)."""
import os
import time

import pytest
import torch

import accelerate  # noqa: F401 (the Accelerate path below)
import transformers

from models import batch, make, weights_finite  # noqa: E402

POLICY = {"known_good_healthy_steps": 3, "spike_warmup_steps": 8}
NAN_AT, SPIKE_AT, BURST = {6}, 14, set(range(24, 30))


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg)


def fused_cpu_args(sidecar, name, **overrides):
    """Trainer arguments for a short CPU run on the device gate (fused AdamW), no saving, no clipping."""
    kw = dict(output_dir=os.path.join(sidecar.checkpoint_root, name), per_device_train_batch_size=4,
              learning_rate=1e-3, save_strategy="no", logging_steps=1000, report_to=[], use_cpu=True,
              max_grad_norm=0.0, optim="adamw_torch_fused", dataloader_num_workers=0, disable_tqdm=True)
    kw.update(overrides)
    return transformers.TrainingArguments(**kw)


class Poison:
    """Forward hook on the LM head: NaN or hugely scaled logits (a loss spike) at chosen forwards."""

    def __init__(self):
        self.calls = 0

    def __call__(self, module, inputs, output):
        if not module.training:
            return None
        i, self.calls = self.calls, self.calls + 1
        h = output[0] if isinstance(output, tuple) else output
        if i in NAN_AT or i in BURST:
            h = h * float("nan")
        elif i == SPIKE_AT:
            h = h * 1e4
        else:
            return None
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h


def test_hf_trainer_skips_nan_and_spike_steps_and_rolls_back_to_its_own_checkpoint(sidecar):
    # prevents: Trainer users logging NaN losses while the optimizer applies them, and no rollback
    from trainguard.hf import TrainguardCallback
    run = "hf-trainer"
    model = tiny_gpt2()
    poison = Poison()
    model.lm_head.register_forward_hook(poison)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (400, 16), generator=g)]
    out = os.path.join(sidecar.checkpoint_root, "hf")
    tg = TrainguardCallback(run, target=sidecar.target, deadline=5.0, policy=POLICY)
    seen = {"rollbacks": []}

    class Checks(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            assert weights_finite(model), f"non-finite weights after step {state.global_step}"
            last = tg.guard.last_verdict
            if last is not None and last.action.name == "ROLLBACK" and not seen["rollbacks"]:
                path = tg.guard.checkpoints[last.rollback.checkpoint_step]["restore"]
                from trainguard.safetensors_io import read_safetensors
                saved = read_safetensors(os.path.join(path, "model.safetensors"))
                now = model.state_dict()
                seen["rollbacks"].append((path, all(torch.equal(saved[k], now[k]) for k in saved)))
            if poison.calls == min(BURST):  # let the sidecar verify a saved checkpoint before the burst
                end = time.monotonic() + 90
                cps = []
                while time.monotonic() < end:
                    cps = sidecar.run_info(run).get("checkpoints", [])
                    if any(c["state"] == "KNOWN_GOOD" for c in cps):
                        return
                    time.sleep(0.2)
                pytest.fail(f"no checkpoint became KNOWN_GOOD: {cps}")

    args = transformers.TrainingArguments(output_dir=out, max_steps=40, per_device_train_batch_size=4,
                                          learning_rate=1e-3, save_steps=5, save_strategy="steps",
                                          logging_steps=1000, report_to=[], use_cpu=True, max_grad_norm=0.0,
                                          dataloader_num_workers=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[tg, Checks()])
    trainer.train()
    by_step = {}
    for step, action, reasons in tg.verdicts:
        by_step.setdefault(step, action)
    assert by_step.get(6) == "SKIP", tg.verdicts
    assert by_step.get(14) in ("SKIP", "CLIP"), tg.verdicts
    assert seen["rollbacks"], f"no ROLLBACK: {tg.verdicts}"
    path, restored = seen["rollbacks"][0]
    assert os.path.basename(path).startswith("checkpoint-") and os.path.dirname(path) == out
    assert restored, "the weights after the rollback are not the Trainer checkpoint's"
    assert weights_finite(model)


def test_accelerate_loop_through_the_wrapper_skips_nan(sidecar):
    # prevents: accelerator.prepare(optimizer) bypassing the verdict (AcceleratedOptimizer.step -> inner step)
    from accelerate import Accelerator
    from trainguard.guard import Guard
    acc = Accelerator(cpu=True)
    model, opt = make()
    guard = Guard(model, opt, "hf-accelerate", target=sidecar.target, deadline=5.0, scaler=acc.scaler)
    model, wopt = acc.prepare(model, guard.wrap(opt))
    skipped = []
    for step in range(15):
        x, y = batch(step)
        if step == 5:
            y = y.clone(); y[0, 0] = float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        acc.backward(loss)
        before = [p.detach().clone() for p in model.parameters()]
        v = guard.step(step, loss)
        wopt.step()
        wopt.zero_grad()
        assert weights_finite(model)
        if not v.should_step:
            skipped.append(step)
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    guard.close()
    assert skipped == [5]


def accelerate_schedule(target=None, nan_at=None, cycles=8):
    """An Accelerate loop with gradient accumulation 2 and a LambdaLR stepped on every micro-batch,
    as Accelerate's examples do (its AcceleratedScheduler steps it at the cycles' ends); guarded with
    guard.wrap(optimizer) and guard.wrap(scheduler) when ``target`` is given. Returns the LR after
    each cycle and the prepared scheduler's class name."""
    from accelerate import Accelerator
    from trainguard.guard import Guard
    acc = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, opt = make()
    guard = None
    if target is not None:
        guard = Guard(model, opt, f"hf-accelerate-schedule-{time.time_ns()}", target=target, deadline=5.0,
                      scaler=acc.scaler, replay=False)
        opt = guard.wrap(opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    if guard is not None:
        sched = guard.wrap(sched)
    model, opt, sched = acc.prepare(model, opt, sched)
    lrs, step = [], 0
    for i in range(2 * cycles):
        x, y = batch(i)
        with acc.accumulate(model):
            if step == nan_at:
                y = y * float("nan")
            loss = torch.nn.functional.mse_loss(model(x), y)
            acc.backward(loss)
            if guard is not None and acc.sync_gradients:
                guard.step(step, loss)
            opt.step()
            sched.step()
            opt.zero_grad()
        if acc.sync_gradients:
            lrs.append(opt.param_groups[0]["lr"])
            step += 1
    if guard is not None:
        guard.close()
    return lrs, type(sched).__name__


def test_a_wrapped_scheduler_prepared_by_accelerate_steps_with_the_updates_and_holds_on_a_skip(sidecar):
    # Prevents: guard.wrap(scheduler) handed to accelerator.prepare() taken for an unknown object (it
    # was no LRScheduler to isinstance): left unwrapped, it stepped on every micro-batch (the schedule
    # ran twice as fast on a healthy run) and save_state did not save it.
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: lr_scheduler.step() before optimizer.step() (a skipped first update)
        ref, _ = accelerate_schedule()
        healthy, prepared = accelerate_schedule(sidecar.target)
        skipped, _ = accelerate_schedule(sidecar.target, nan_at=3)
    assert prepared == "AcceleratedScheduler"
    assert healthy == ref
    assert skipped == ref[:3] + ref[2:7]  # the skipped step's update and its schedule step left out


def test_hf_trainer_on_the_device_gate_measures_at_backward_end_and_skips_nan(sidecar):
    # prevents: the Trainer's per-step loss read making the guard's gate late, or the early
    # measurement letting a NaN update through
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    poison = Poison()
    model.lm_head.register_forward_hook(poison)
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (200, 16), generator=g)]
    tg = TrainguardCallback("hf-trainer-gate", target=sidecar.target, deadline=5.0, policy=POLICY, device_gate=True)
    before = {}

    class Checks(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            before["w"] = [p.detach().clone() for p in model.parameters()]

        def on_step_end(self, args, state, control, model=None, **kw):
            assert weights_finite(model), f"non-finite weights after step {state.global_step}"
            if state.global_step - 1 in NAN_AT:  # the NaN forward's step: the update was skipped on the device
                assert all(torch.equal(a, b) for a, b in zip(before["w"], model.parameters()))

    args = fused_cpu_args(sidecar, "hf-gate", max_steps=12)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[tg, Checks()])
    trainer.train()
    guard = tg.guard
    assert guard.counters["device_gated_steps"] >= 10
    assert guard.backward_gate.counters["used"] >= 8, guard.backward_gate.counters
    assert guard.counters["skips"] == 1
    # the skip the device made is learned a step later: listed among the verdicts, and the LR
    # schedule held back once for it (12 steps, 11 updates)
    assert [(step, action) for step, action, _ in tg.verdicts] == [(6, "SKIP")], tg.verdicts
    assert trainer.lr_scheduler.last_epoch == 11


def token_rows(n):
    """``n`` seeded rows of 16 random tokens, each its own label."""
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 64, (n, 16), generator=g)]


def train_on_gate(sidecar, name, rows, **args):
    """A tiny GPT-2 trained by the Trainer on the CPU's device gate; returns (callback, model)."""
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    data = token_rows(rows)
    tg = TrainguardCallback(f"hf-trainer-{name}", target=sidecar.target, deadline=5.0, device_gate=True)
    transformers.Trainer(model=model, args=fused_cpu_args(sidecar, f"hf-{name}", **args), train_dataset=data,
                         callbacks=[tg]).train()
    return tg, model


@pytest.mark.parametrize("max_grad_norm", [1e6, 1e-4])
def test_hf_trainer_that_clips_itself_keeps_the_measurement_at_backward_end_and_updates_as_unguarded(
        sidecar, max_grad_norm):
    # prevents: every step of a Trainer with max_grad_norm set (its default, 1.0) measured only after
    # the loss read, judged on the clipped gradients, or clipped twice (the guard's clip from the norm
    # before the Trainer's)
    tg, model = train_on_gate(sidecar, f"clips-{max_grad_norm}", 40, max_steps=5, max_grad_norm=max_grad_norm)
    assert tg.guard.counters["device_gated_steps"] == 5
    assert tg.guard.backward_gate.counters == {"measured": 5, "used": 5, "stale": 0, "dropped": 0}
    plain = tiny_gpt2()
    transformers.Trainer(model=plain, args=fused_cpu_args(sidecar, f"hf-plain-{max_grad_norm}", max_steps=5,
                                                          max_grad_norm=max_grad_norm), train_dataset=token_rows(40)).train()
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))  # the same updates


def test_the_guards_clip_below_the_trainers_clips_once_to_its_own_threshold(sidecar):
    # prevents: a step both clip divided twice: the guard's clip computed from the norm before the
    # Trainer's, applied to gradients the Trainer had already scaled down to max_grad_norm
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    tg = TrainguardCallback(f"hf-trainer-clip-twice-{time.time_ns()}", target=sidecar.target, deadline=5.0,
                            device_gate=True, policy={"clip_mode": "FIXED", "clip_threshold": 0.5})
    transformers.Trainer(model=model, args=fused_cpu_args(sidecar, "hf-clip-twice", max_steps=6, max_grad_norm=1.0),
                         train_dataset=token_rows(48), callbacks=[tg]).train()
    assert tg.guard.backward_gate.counters["used"] == 6
    plain = tiny_gpt2()  # the same clip to 0.5 done once, by the Trainer
    transformers.Trainer(model=plain, args=fused_cpu_args(sidecar, "hf-clip-once", max_steps=6, max_grad_norm=0.5),
                         train_dataset=token_rows(48)).train()
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(plain.parameters(), model.parameters()))


def test_hf_trainer_that_clips_itself_reports_a_gradient_spike_with_its_norm_before_the_clip(sidecar):
    # prevents: the Trainer's default max_grad_norm=1.0 hiding every gradient spike from the guard
    # (it saw the clipped norm, at most 1.0), with the loss not in the model's output (label smoothing)
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    spike_at = 14

    def spike(module, inputs, output):
        spike.calls += 1
        return output * 1e4 if module.training and spike.calls - 1 == spike_at else None
    spike.calls = 0
    model.lm_head.register_forward_hook(spike)
    run = f"hf-trainer-clip-spike-{time.time_ns()}"
    tg = TrainguardCallback(run, target=sidecar.target, deadline=5.0, device_gate=True, policy=POLICY)
    args = fused_cpu_args(sidecar, "hf-clip-spike", max_steps=18, max_grad_norm=1.0, label_smoothing_factor=0.1)
    transformers.Trainer(model=model, args=args, train_dataset=token_rows(80), callbacks=[tg]).train()
    # Armed through the logits (no loss in the output) at every step but, since the sidecar's local bounds
    # hold only until the end of the spike warm-up (commit 6afa9a7), step 8: the bounds after the warm-up
    # come with step 7's verdict, whose report is held until step 8's backward, after step 8 was armed.
    counters = tg.guard.backward_gate.counters
    assert counters["used"] >= 17 and counters["stale"] == 0, counters
    spikes = [i for i in sidecar.run_info(run)["incidents"] if i["kind"] == "GRAD_SPIKE"]
    assert [i["step"] for i in spikes] == [spike_at], sidecar.run_info(run)["incidents"]
    assert weights_finite(model)


def test_hf_trainer_with_gradient_accumulation_measures_the_cycles_last_backward(sidecar):
    # prevents: an earlier micro-batch's backward (which only lets the held report go) being
    # measured, or the cycle's last one not being measured
    tg, model = train_on_gate(sidecar, "accum", 64, max_steps=4, gradient_accumulation_steps=2)
    assert tg.guard.counters["device_gated_steps"] == 4
    assert tg.guard.backward_gate.counters == {"measured": 4, "used": 4, "stale": 0, "dropped": 0}
    assert weights_finite(model)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_a_transformers_model_is_watched_layer_by_layer_and_a_nan_is_named_by_its_layer(sidecar, family):
    # Prevents: a transformers model watched as "transformer" + "lm_head", so a NaN inside decoder
    # layer 1 was named by the whole transformer, and the logits read in full for one statistic.
    from trainguard.guard import Guard
    torch.manual_seed(0)
    small = dict(vocab_size=64, num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32,
                                                                     n_layer=2, n_head=2))
        layers, expected = model.transformer.h, ["transformer.wte", "transformer.wpe", "transformer.h.0",
                                                  "transformer.h.1", "transformer.ln_f", "lm_head"]
    elif family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=2, **small))
        layers, expected = model.model.layers, ["model.embed_tokens", "model.layers.0", "model.layers.1",
                                                "model.norm", "lm_head"]
    else:
        model = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2, **small))
        layers, expected = model.bert.encoder.layer, ["bert.embeddings", "bert.encoder.layer.0",
                                                      "bert.encoder.layer.1", "bert.pooler", "dropout", "classifier"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = Guard(model, opt, f"layers-{family}-{time.time_ns()}", target=sidecar.target, deadline=5.0)
    assert g.watch.names == expected
    name = next(n for n in expected if n.endswith(".1"))  # the second layer
    inner = layers[1].intermediate if family == "bert" else layers[1].mlp  # inside the layer: its hook runs first
    poison = inner.register_forward_hook(lambda mod, inp, out: out * float("nan"))
    ids = torch.randint(0, 64, (2, 8))
    labels = torch.tensor([0, 1]) if family == "bert" else ids
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    v = g.step(0, loss)
    poison.remove()
    opt.zero_grad()
    g.close()
    assert v.action.name == "SKIP" and v.first_nonfinite_module == name, (v.action, v.first_nonfinite_module)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_guard_built_on_the_optimizer_accelerate_prepared_says_to_build_it_before_prepare(sidecar):
    # prevents: a raw AttributeError ('AcceleratedOptimizer' object has no attribute '_optimizer_step_pre_hooks')
    from accelerate import Accelerator
    from trainguard.guard import Guard
    model, opt = make()
    _, prepared = Accelerator(cpu=True).prepare(model, opt)
    with pytest.raises(TypeError, match="before prepare"):
        Guard(model, prepared, "hf-after-prepare", target=sidecar.target)
