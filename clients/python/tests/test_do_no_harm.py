"""Do no harm by default: a healthy run guarded with every default ends bit-identical to the same
run unguarded (real sidecar jar, default policy), through each way of guarding a loop."""
import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from models import batch, make

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
