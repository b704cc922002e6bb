"""``TrainguardCallback`` takes the Trainer's NaN/Inf loss filter over on the device
(trainguard.hf_loss_filter), given in ``callbacks=[...]`` or through ``attach(trainer)``, against the
real sidecar jar and the real transformers Trainer on a tiny GPT-2 built from a config: the Trainer
no longer reads each micro-batch's loss on the host, logs the same losses as with its own filter,
and evaluation keeps the filter as the user set it. Also the
Trainer's own clip when the early measurement's statistics have not landed at the optimizer step, as
on a GPU once nothing reads the loss on the host. Skipped without transformers (the Debian stack)."""
import pytest
import torch

import transformers

from models import trainer_isnan_calls
from test_hf import fused_cpu_args, tiny_gpt2, token_rows
from test_hf_sweep import NanAt

NAN_FORWARDS = (3, 6)


class EvalNan:
    """Forward hook on the LM head: NaN output in the first batch of each two-batch evaluation."""

    def __init__(self):
        self.calls = 0

    def __call__(self, module, inputs, output):
        if module.training:
            return None
        self.calls += 1
        return output * float("nan") if self.calls % 2 == 1 else None


def train(sidecar, name, form, accumulation=1, eval_nan=None, **args):
    """A tiny GPT-2 trained by the Trainer under the guard, NaN at two training forwards; returns
    (trainer, callback). ``form``: "callbacks" (``callbacks=[...]``), "attach" (``attach(trainer)``)
    or "stock" (``callbacks=[...]`` with ``device_loss_filter=False``: the Trainer's own check)."""
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    model.lm_head.register_forward_hook(NanAt(NAN_FORWARDS))
    if eval_nan is not None:
        model.lm_head.register_forward_hook(eval_nan)
    tg = TrainguardCallback(f"hf-filter-{name}", target=sidecar.target, deadline=5.0,
                            device_loss_filter=form != "stock")
    kw = dict(max_steps=8, logging_steps=2, gradient_accumulation_steps=accumulation)
    kw.update(args)
    trainer = transformers.Trainer(model=model, args=fused_cpu_args(sidecar, f"hf-filter-{name}", **kw),
                                   train_dataset=token_rows(80), eval_dataset=token_rows(8) if eval_nan else None,
                                   callbacks=None if form == "attach" else [tg])
    if form == "attach":
        assert tg.attach(trainer) is tg
    trainer.train()
    return trainer, tg


@pytest.mark.parametrize("form, accumulation", [("attach", 1), ("attach", 2), ("callbacks", 1), ("callbacks", 2)])
def test_a_guarded_trainer_never_reads_the_loss_on_the_host_and_logs_the_losses_its_own_filter_logs(
        sidecar, monkeypatch, form, accumulation):
    # Prevents: a guarded Trainer on a GPU waiting on the host for every step's backward (its NaN
    # filter), or the device's filter logging other losses than the Trainer's (a NaN kept for good)
    reads = trainer_isnan_calls(monkeypatch)
    stock, stock_tg = train(sidecar, f"stock-{form}-{accumulation}", "stock", accumulation=accumulation)
    micro_batches = 8 * accumulation
    assert len(reads) == micro_batches  # the Trainer's own check, a host read per micro-batch
    assert stock_tg.loss_filter is None
    del reads[:]
    attached, tg = train(sidecar, f"{form}-{accumulation}", form, accumulation=accumulation)
    assert reads == []
    assert tg.loss_filter.counters == {"on_device": micro_batches, "left_to_the_trainer": 0}
    logged = [h["loss"] for h in attached.state.log_history if "loss" in h]
    assert len(logged) == 4 and all(x == x for x in logged), logged  # every one finite: the NaNs filtered
    assert logged == [h["loss"] for h in stock.state.log_history if "loss" in h]
    assert tg.guard.counters["skips"] == stock_tg.guard.counters["skips"] == 2
    assert attached.args.logging_nan_inf_filter is True


def test_evaluation_under_a_guarded_trainer_keeps_the_trainers_filter(sidecar):
    # Prevents: the flag lowered for the Trainer's check of a training loss still lowered when an
    # evaluation between steps reads it, so one NaN batch makes the whole eval_loss NaN
    eval_nan = EvalNan()
    trainer, tg = train(sidecar, "eval", "callbacks", eval_nan=eval_nan, eval_strategy="steps", eval_steps=2,
                        per_device_eval_batch_size=4)
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert eval_nan.calls == 8  # four evaluations of two batches, the first of each NaN
    assert len(evals) == 4 and all(e == e for e in evals), evals  # the Trainer's filter left the NaN batch out
    assert tg.loss_filter.counters["on_device"] == 8


@pytest.mark.parametrize("form", ["attach", "callbacks"])
def test_every_other_callback_sees_the_trainers_flag_as_the_user_set_it(sidecar, form):
    # Prevents: callbacks that run before the guard's (a user's evaluation in on_pre_optimizer_step)
    # seeing the flag still lowered for the Trainer's check; and, given in callbacks=[...], the
    # filter installed from on_train_begin running that event of a callback twice (a list insert
    # while the Trainer iterates it)
    seen, began = [], []

    class Flag(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            began.append(self)

        def on_substep_end(self, args, state, control, **kw):
            seen.append(args.logging_nan_inf_filter)

        on_pre_optimizer_step = on_step_end = on_substep_end

    from trainguard.hf import TrainguardCallback
    tg = TrainguardCallback(f"hf-filter-order-{form}", target=sidecar.target, deadline=5.0)
    first, last = Flag(), Flag()
    trainer = transformers.Trainer(model=tiny_gpt2(), train_dataset=token_rows(40),
                                   callbacks=[first] if form == "attach" else [first, tg, last],
                                   args=fused_cpu_args(sidecar, f"hf-filter-order-{form}", max_steps=4,
                                                       gradient_accumulation_steps=2))
    if form == "attach":
        tg.attach(trainer)
        trainer.add_callback(last)
    trainer.train()
    assert tg.loss_filter.counters["on_device"] == 8
    assert began == [first, last] and tg.run == f"hf-filter-order-{form}"  # one on_train_begin each
    assert len(seen) == 2 * 4 * 3 and all(seen), seen  # a substep end and the two step events, each step


class ClipFails(Exception):
    pass


def test_an_evaluation_after_a_step_cut_short_keeps_the_trainers_filter(sidecar):
    # Prevents: an exception between the Trainer's check and the next callback event (here in the
    # Trainer's clip) leaving the flag lowered for good: the next evaluate() averaging in a NaN batch
    # and save_model() writing it into training_args.bin
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    trainer = transformers.Trainer(model=model, train_dataset=token_rows(40), eval_dataset=token_rows(8),
                                   args=fused_cpu_args(sidecar, "hf-filter-cut", max_steps=6, max_grad_norm=1.0,
                                                       per_device_eval_batch_size=4))
    tg = TrainguardCallback("hf-filter-cut", target=sidecar.target, deadline=5.0).attach(trainer)
    clip, calls = trainer._clip_grad_norm, [0]

    def clip_then_fail(m):
        calls[0] += 1
        if calls[0] == 3:
            raise ClipFails("the clip failed")
        return clip(m)
    trainer._clip_grad_norm = clip_then_fail
    with pytest.raises(ClipFails):
        trainer.train()
    assert tg.loss_filter.counters["on_device"] == 3
    eval_nan = EvalNan()
    model.lm_head.register_forward_hook(eval_nan)
    loss = trainer.evaluate()["eval_loss"]
    assert eval_nan.calls == 2 and loss == loss, loss  # the NaN batch left out, as the user set it
    assert trainer.args.logging_nan_inf_filter is True


def test_attach_leaves_a_trainer_whose_filter_the_user_turned_off_as_it_is(sidecar):
    from trainguard.hf import TrainguardCallback
    trainer = transformers.Trainer(model=tiny_gpt2(), train_dataset=token_rows(8),
                                   args=fused_cpu_args(sidecar, "hf-filter-off", max_steps=1,
                                                       logging_nan_inf_filter=False))
    tg = TrainguardCallback("hf-filter-off", target=sidecar.target).attach(trainer)
    assert tg.loss_filter is None and "training_step" not in trainer.__dict__
    assert tg in trainer.callback_handler.callbacks
    assert tg.attach(trainer) is tg and trainer.callback_handler.callbacks.count(tg) == 1


def test_a_callback_leaves_a_trainer_whose_filter_the_user_turned_off_as_it_is(sidecar, monkeypatch):
    # Prevents: the device's filter turning a check back on that the user turned off
    from trainguard.hf import TrainguardCallback
    reads = trainer_isnan_calls(monkeypatch)
    tg = TrainguardCallback("hf-filter-off-cb", target=sidecar.target, deadline=5.0)
    trainer = transformers.Trainer(model=tiny_gpt2(), train_dataset=token_rows(16), callbacks=[tg],
                                   args=fused_cpu_args(sidecar, "hf-filter-off-cb", max_steps=2,
                                                       logging_nan_inf_filter=False))
    trainer.train()
    assert tg.loss_filter is None and "training_step" not in trainer.__dict__
    assert reads == [] and trainer.args.logging_nan_inf_filter is False


def test_a_callback_handed_to_a_second_trainer_takes_that_trainers_filter_over_too(sidecar, monkeypatch):
    # Prevents: the filter installed once, on the first Trainer, so a second Trainer given the same
    # callback (a notebook's next experiment) reads every micro-batch's loss on the host again
    from trainguard.hf import TrainguardCallback
    reads = trainer_isnan_calls(monkeypatch)
    tg = TrainguardCallback("hf-filter-two", target=sidecar.target, deadline=5.0)
    filters = []
    for n in range(2):
        trainer = transformers.Trainer(model=tiny_gpt2(), train_dataset=token_rows(16), callbacks=[tg],
                                       args=fused_cpu_args(sidecar, f"hf-filter-two-{n}", max_steps=3))
        trainer.train()
        assert tg.loss_filter.trainer is trainer and tg.loss_filter.counters["on_device"] == 3
        filters.append(tg.loss_filter)
    assert reads == [] and filters[0] is not filters[1]


class NotLanded:
    """Stands in for the CUDA event of the early measurement's copy to the host while the copy is in
    flight, as at the optimizer step of a GPU Trainer that no longer reads the loss on the host (on
    the CPU the copy has always landed)."""

    def query(self):
        return False

    def synchronize(self):
        pass


def test_the_trainers_own_clip_keeps_the_early_measurement_while_its_statistics_are_in_flight(
        sidecar, monkeypatch):
    # Prevents: every step of an attached Trainer with max_grad_norm set (its default) measured a
    # second time at the optimizer step, because the clip's factor was not on the host yet
    from trainguard.measure import DeviceGate
    stage = DeviceGate.stage
    monkeypatch.setattr(DeviceGate, "stage", lambda self, *t: (stage(self, *t)[0], NotLanded()))
    from trainguard.hf import TrainguardCallback
    model = tiny_gpt2()
    args = dict(max_steps=5, max_grad_norm=1e-4)  # clips every step
    trainer = transformers.Trainer(model=model, args=fused_cpu_args(sidecar, "hf-filter-clip", **args),
                                   train_dataset=token_rows(40))
    tg = TrainguardCallback("hf-filter-clip", target=sidecar.target, deadline=5.0, device_gate=True).attach(trainer)
    trainer.train()
    assert tg.guard.backward_gate.counters == {"measured": 5, "used": 5, "stale": 0, "dropped": 0}
    plain = tiny_gpt2()
    transformers.Trainer(model=plain, args=fused_cpu_args(sidecar, "hf-filter-clip-plain", **args),
                         train_dataset=token_rows(40)).train()
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))  # clipped once, as unguarded
