"""Do no harm by default: a healthy run guarded with every default ends bit-identical to the same
run unguarded (real sidecar jar, default policy), through each way of guarding a loop."""
import time
import warnings

import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from models import batch, guarded_update, make

STEPS = 100  # past the spike detectors' warm-up (64 steps): they watch but must not act


def data(step):
    x, y = batch(step)
    return x, 8.0 * y  # a target scale at which the healthy grad norm is well above 1.0


def fused_adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)


def unguarded(how):
    model, opt = make()
    if how == "gate":
        opt = fused_adamw(model)
    for step in range(STEPS):
        x, y = data(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


def guarded(target, how):
    model, opt = make()
    if how == "gate":  # the device gate: the fused optimizer reads found_inf / grad_scale every step
        opt = fused_adamw(model)
    g = Guard(model, opt, f"noharm-{how}", target=target, device_gate=(how == "gate") or "auto")
    wopt = g.wrap(opt) if how == "wrap" else None
    actions = set()
    norms = []
    for step in range(STEPS):
        x, y = data(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        norms.append(float(torch.stack([p.grad.norm() for p in model.parameters()]).norm()))
        actions.add(g.step(step, loss).action)
        if how == "wrap":
            wopt.step()
            wopt.zero_grad(set_to_none=True)
        else:
            g.optimizer_step()
            opt.zero_grad(set_to_none=True)
    g.close()
    return model, actions, g.counters, norms


@pytest.mark.parametrize("how", ["optimizer_step", "wrap",
                                 pytest.param("gate", marks=pytest.mark.torch2)])
def test_healthy_run_with_defaults_is_bit_identical_to_unguarded(sidecar, how):
    # prevents: a default policy that clips (FIXED 1.0 clipped 46 of 100 healthy steps) changing runs silently
    ref = unguarded(how)
    model, actions, counters, norms = guarded(sidecar.target, how)
    assert actions == {Action.APPLY}, actions
    if how == "gate":
        assert counters["device_gated_steps"] >= STEPS - 10
    assert counters["clips"] == 0 and counters["skips"] == 0
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))
    # the run is one that a FIXED 1.0 default would have changed
    assert sum(n > 1.0 for n in norms) >= STEPS // 2


def dropout_run(guard_with=None, samples=0):
    """30 steps of a dropout model whose data order and dropout draw from the global RNG, with a
    validation over a DataLoader every 10 steps (which takes its base seed from the same RNG) that
    also draws ``samples`` normal numbers from it (a VAE's or a diffusion model's sampling)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Dropout(0.2), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    g = guard_with(m, opt) if guard_with else None
    xs, ys = torch.randn(64, 4), torch.randn(64, 1)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8)

    def evaluate():
        m.eval()
        with torch.no_grad():
            total = sum(float(torch.nn.functional.mse_loss(m(x), y)) for x, y in val)
            total += 0.0 * float(torch.randn(samples).sum()) if samples else 0.0
        m.train()
        return total
    audits = []
    for step in range(31):
        idx = torch.randint(0, 64, (16,))
        torch.nn.functional.mse_loss(m(xs[idx]), ys[idx]).backward()
        if g is not None:
            g.step(step, None)
        opt.step()
        opt.zero_grad()
        if step and step % 10 == 0:
            if g is None:
                evaluate()
                continue
            with g.validation(m, step=step) as v:
                if v.allowed:
                    v.loss = evaluate()
            audits.append(v.audit)
    if g is not None:
        g.close()
    return [p.detach().clone() for p in m.parameters()], audits, g


@pytest.mark.parametrize("samples", [0, 500_000], ids=["loader", "sampling"])
def test_a_healthy_validation_over_a_dataloader_is_no_incident_and_leaves_the_run_as_unguarded(sidecar, samples):
    # prevents: every validation over a DataLoader (its base seed drawn from the global RNG) read as
    # "RNG changed", reported, and the RNG rewound: the guarded run then drew other dropout masks.
    # And a validation that samples (16,384 draws were enough) read as a reseed the same way.
    want, _, _ = dropout_run(samples=samples)
    got, audits, g = dropout_run(lambda m, opt: Guard(m, opt, f"no-harm-val-{samples}-{time.time_ns()}",
                                                      target=sidecar.target, deadline=5.0,
                                                      policy={"validation_warmup_steps": 5,
                                                              "validation_interval_steps": 5}), samples=samples)
    assert len(audits) == 3 and not any(a["rng_changed"] for a in audits), audits
    assert g.counters["validation_incidents"] == 0
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def overflowing_amp_run(target=None, how=None, steps=30):
    """fp16 autocast under a GradScaler whose first steps overflow (init_scale 2**32, as a too-high
    scale does at the start of any fp16 run), with a OneCycleLR stepped per step."""
    model, opt = make(lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 32)
    g = None
    if how == "wrap":
        g = Guard(model, opt, f"noharm-overflow-wrap-{time.time_ns()}", target=target, scaler=scaler)
        opt = g.wrap(opt)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    if how == "wrap":
        sched = g.wrap(sched)
    elif how == "optimizer_step":
        g = Guard(model, opt, f"noharm-overflow-step-{time.time_ns()}", target=target, scaler=scaler, scheduler=sched)
    actions, lrs = [], []
    for step in range(steps):
        x, y = data(step)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if how == "optimizer_step":
            actions.append(g.step(step, loss).action)
            g.optimizer_step()
        else:
            if g is not None:
                actions.append(g.step(step, loss).action)
            scaler.step(opt)
            scaler.update()
            sched.step()
        opt.zero_grad(set_to_none=True)
        lrs.append(opt.param_groups[0]["lr"])
    if g is not None:
        g.close()
    return model, actions, lrs


@pytest.mark.torch2  # GradScaler on the CPU needs torch >= 2.3
@pytest.mark.parametrize("how", ["wrap", "optimizer_step"])
def test_a_schedule_the_guard_holds_advances_on_grad_scaler_overflows_as_without_a_guard(sidecar, how):
    # Prevents: guard.wrap(scheduler) and guard.optimizer_step() holding the LR schedule back on the
    # scaler's own overflow skips (every verdict that was not should_step), so a healthy fp16 run's
    # schedule ran behind the unguarded one's and its weights parted from it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: lr_scheduler.step() before optimizer.step() (the first overflows)
        ref, _, ref_lrs = overflowing_amp_run()
        model, actions, lrs = overflowing_amp_run(sidecar.target, how)
    assert actions[0] == Action.SKIP and Action.APPLY in actions  # the run did overflow, then trained
    assert lrs == ref_lrs
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))


class MaskedPolicy(torch.nn.Module):
    """A policy whose head gives invalid actions -inf logits (as action and vocabulary masks do): its
    output is never finite, its loss and gradients always are."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh())
        self.head = MaskedHead()

    def forward(self, x, mask):
        return self.head(self.body(x), mask)


class MaskedHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 6)

    def forward(self, h, mask):
        return self.fc(h).masked_fill(~mask, float("-inf"))


def masked_policy_run(target=None, how=None, nan_at=None, steps=30):
    torch.manual_seed(0)
    model = MaskedPolicy()
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True) if how == "gate"
           else torch.optim.AdamW(model.parameters(), lr=1e-2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + 0.1 * k))  # a skip would hold it back
    g = (Guard(model, opt, f"noharm-masked-{how}-{time.time_ns()}", target=target, scheduler=sched,
               device_gate=(how == "gate") or "auto") if target else None)
    mask = torch.ones(32, 6, dtype=torch.bool)
    mask[:, 4:] = False
    actions = []
    for step in range(steps):
        x, _ = batch(step)
        if step == nan_at:
            x = x.clone()
            x[0, 0] = float("nan")
        guarded_update(g, opt, step, torch.nn.functional.cross_entropy(model(x, mask), torch.arange(32) % 4), actions)
        if g is None:
            sched.step()
    if g is not None:
        g.close()
    return model, actions, g


@pytest.mark.parametrize("how", ["optimizer_step", pytest.param("gate", marks=pytest.mark.torch2)])
def test_a_head_that_masks_with_minus_infinity_trains_as_unguarded_and_a_nan_is_still_skipped(sidecar, how):
    # Prevents: the default module watch taking a head's -inf logits (action or vocabulary masking; loss
    # and gradients finite) for a non-finite step: every step skipped, rollbacks until the run halted.
    # And on the device gate, every such step learned later as a skip the device made, each holding
    # the LR schedule back once (late_skips kept the old rule).
    ref, _, _ = masked_policy_run(how=how)
    model, actions, g = masked_policy_run(sidecar.target, how)
    assert set(actions) == {Action.APPLY}, actions
    assert g.counters["skips"] == 0
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), model.parameters()))
    # a NaN in the body's output is still a fault: skipped, and charged to the module where it appeared
    model, actions, g = masked_policy_run(sidecar.target, how, nan_at=12)
    assert g.counters["skips"] == 1
    incidents = sidecar.run_info(g.run)["incidents"]
    assert [i["module"] for i in incidents if i["kind"] == "NON_FINITE_MODULE"][:1] == ["body.0"], incidents
