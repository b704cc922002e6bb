"""The device gate's skips, learned on the host a step later (late_skips), against the real sidecar
on the CPU's device gate (fused AdamW honours found_inf like the CUDA kernel): the LR schedule counts
applied updates, not steps, and a framework callback lists the skip among its verdicts."""
import pytest
import torch

from trainguard.guard import Guard
from models import FlipOnce, batch, weights_finite
from test_gated_replay import QUICK, make_fused, run_loop

pytestmark = pytest.mark.torch2  # fused AdamW on the CPU: torch >= 2.4

STEPS, NAN_STEP = 16, 5


def decaying(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))  # a new LR every step


def nan_at(step, x, y):
    if step == NAN_STEP:
        y = y.clone()
        y[0, 0] = float("nan")
    return x, y


def test_a_skip_on_the_device_holds_the_wrapped_scheduler_back_once(sidecar):
    # prevents: the schedule running one step ahead of the updates for every NaN the device skipped
    model, opt = make_fused()
    g = Guard(model, opt, "late-skip-wrapped", target=sidecar.target, device_gate=True, deadline=5.0,
              policy=QUICK, replay=False)
    gopt = g.wrap(opt)
    sched = g.wrap(decaying(gopt))
    lrs = []
    for step in range(STEPS):
        x, y = nan_at(step, *batch(step))
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        lrs.append(opt.param_groups[0]["lr"])
        v = g.step(step, loss)
        gopt.step()
        sched.step()
        gopt.zero_grad(set_to_none=True)
        assert weights_finite(model) and v.device_gated
    g.close()
    assert g.counters["skips"] == 1
    # step 5 ran at the 6th rate and was skipped; step 6 learned it: the rate after it stays
    assert lrs[NAN_STEP + 1] == lrs[NAN_STEP + 2] and lrs[NAN_STEP + 2] != lrs[NAN_STEP + 3]
    assert sched.last_epoch == STEPS - 1


def test_optimizer_step_holds_the_guards_scheduler_back_for_a_deterministic_fault_not_a_transient_one(sidecar):
    # prevents: a replayed fault whose update was applied (TRANSIENT) costing the schedule a step
    for name, inject, skipped in (("late-skip-poison", nan_at, 1),
                                  ("late-skip-flip", None, 0)):
        model, opt = make_fused()
        sched = decaying(opt)
        g = Guard(model, opt, name, target=sidecar.target, device_gate=True, deadline=5.0, policy=QUICK,
                  scheduler=sched)
        if inject is None:
            inject = FlipOnce(model.blocks[0], step=NAN_STEP).mark  # a one-off NaN a replay fixes
        torch.manual_seed(7)
        run_loop(g, model, opt, STEPS, inject=inject)
        g.close()
        assert g.recovery.counters["replayed_updates"] == 1 - skipped, name
        assert sched.last_epoch == STEPS - skipped, name


def test_a_first_step_nan_under_fused_sgd_with_momentum_leaves_no_uninitialised_momentum(sidecar):
    # prevents: fused SGD creating its momentum buffers with empty_like before its kernel reads found_inf:
    # a first step skipped on the device left garbage momentum that the next steps applied
    def run(nan_first):
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, fused=True)
        g = Guard(model, opt, f"fused-sgd-first-{nan_first}", target=sidecar.target, device_gate=True, deadline=5.0,
                  replay=False)
        for step in range(4):
            x, y = batch(step)
            if nan_first and step == 0:
                y = torch.full_like(y, float("nan"))
            elif not nan_first and step == 0:
                continue  # the same run without step 0
            torch.nn.functional.mse_loss(model(x), y).backward()
            g.step(step, None)
            g.optimizer_step()
            opt.zero_grad(set_to_none=True)
        g.close()
        return model
    a, b = run(True), run(False)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_device_skip_of_a_step_measured_without_a_loss_says_the_loss_was_absent(sidecar):
    # prevents: the late skip's reason reading the loss slot's 0.0 placeholder as "loss=0.0"
    model, opt = make_fused()
    g = Guard(model, opt, "late-skip-absent", target=sidecar.target, device_gate=True, deadline=5.0,
              policy=QUICK, replay=False)
    for step in range(NAN_STEP + 3):
        x, y = nan_at(step, *batch(step))
        torch.nn.functional.mse_loss(model(x), y).backward()
        g.step(step, None)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    g.close()
    reasons = [r for _, _, rs in g.gated.late.take() for r in rs]
    assert any("loss=absent" in r for r in reasons) and not any("loss=0.0" in r for r in reasons), reasons


def test_a_finite_spike_the_device_gate_applied_clipped_is_recorded_as_applied_not_skipped(sidecar):
    # prevents: the sidecar recording a loss spike as SKIP (its step history: skips=1, clips=0) although
    # the device gate had applied the update, clipped to the spike bound, before the verdict came
    model, opt = make_fused()
    run = "device-gate-spike-recorded"
    g = Guard(model, opt, run, target=sidecar.target, device_gate=True, deadline=5.0, replay=False,
              policy=dict(QUICK, spike_warmup_steps=8))
    spike = 14
    for step in range(spike + 3):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step == spike:
            loss = loss * 1000.0
        loss.backward()
        g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    g.close()
    kinds = [(i["kind"], i["step"]) for i in sidecar.run_info(run)["incidents"]]
    assert ("LOSS_SPIKE", spike) in kinds, kinds
    bucket = sidecar.get(f"/api/runs/{run}/steps?from={spike}&to={spike}")["steps"]["buckets"][0]
    assert bucket["skips"] == 0 and bucket["clips"] == 1, bucket
    assert g.counters["skips"] == 0, g.counters
