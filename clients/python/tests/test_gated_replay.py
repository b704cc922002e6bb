"""Fault replay on the device-gated path, against the real sidecar: a non-finite step is skipped on
the device, so its weights are untouched when the host learns of it one step later; it is then
replayed, classified, and a TRANSIENT fault's clean update is applied (no step lost). Fused AdamW on
the CPU honours found_inf/grad_scale like the CUDA kernel, so the whole path runs here."""
import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from models import MLP, FlipOnce, batch, weights_finite

pytestmark = pytest.mark.torch2  # fused AdamW on the CPU: torch >= 2.4

QUICK = {"known_good_healthy_steps": 2, "validation_warmup_steps": 10**6, "clip_mode": "OFF",
         "max_consecutive_skips": 3, "rollback_rewarm_steps": 2, "max_rollbacks": 3}


class DropMLP(MLP):
    """Dropout makes every forward consume the RNG: a replay that does not restore it diverges."""

    def __init__(self):
        super().__init__()
        self.drop = torch.nn.Dropout(0.2)

    def forward(self, x):
        return super().forward(self.drop(x))


def make_fused(seed=0):
    torch.manual_seed(seed)
    model = DropMLP()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)


def run_loop(g, model, opt, steps, inject=None, before=None):
    """The guarded loop of the README with a replay callable; returns the verdicts. ``before`` gets
    (step, weights before the step's update)."""
    out = []
    for step in range(steps):
        x, y = batch(step)
        if inject is not None:
            x, y = inject(step, x, y)

        def fwd_bwd(x=x, y=y):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        loss = fwd_bwd()
        if before is not None:
            before(step, [p.detach().clone() for p in model.parameters()])
        v = g.step(step, loss, replay=fwd_bwd)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"non-finite weights after step {step} ({v.action.name})"
        out.append(v)
    return out


def unguarded(steps):
    torch.manual_seed(123)
    model, opt = make_fused()
    torch.manual_seed(7)
    for step in range(steps):
        x, y = batch(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model


def count_reads(g):
    """Steps at which the guard read the step's statistics on the host (the packed read)."""
    reads, inner = [], g.meter.read
    g.meter.read = lambda loss: (reads.append(g.recovery.position() - 1), inner(loss))[1]
    return reads


def test_activation_corrupted_once_on_the_device_gate_is_transient_and_no_step_lost(sidecar):
    # prevents: the device gate losing a step (and its sample) for a one-off bit flip a replay fixes
    model, opt = make_fused()
    g = Guard(model, opt, "gated-transient", target=sidecar.target, device_gate=True, deadline=5.0, policy=QUICK)
    mark = FlipOnce(model.blocks[0], step=7).mark  # a one-off NaN in one activation at step 7
    reads = count_reads(g)
    torch.manual_seed(7)
    vs = run_loop(g, model, opt, 15, inject=mark)
    g.close()
    gated = [v.step for v in vs if v.device_gated]
    assert 7 in gated and 8 in gated and len(gated) >= 10
    assert vs[7].fault_class == "TRANSIENT" and all(v.should_step for v in vs)
    assert g.recovery.counters["transient"] == 1 and g.recovery.counters["replayed_updates"] == 1
    # the healthy gated steps read nothing on the host; only step 8 did, to replay step 7
    assert set(reads) & set(gated) == {8} and reads.count(8) == 1
    # no step lost: the weights equal an unguarded run that never saw the flip (same RNG stream)
    ref = unguarded(15)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    incidents = sidecar.run_info("gated-transient")["incidents"]
    assert any(i["kind"] == "FAULT_REPLAYED" and i["message"].startswith("TRANSIENT") for i in incidents), incidents


def test_poisoned_batch_on_the_device_gate_is_deterministic_and_skipped(sidecar):
    # prevents: a bad batch on the fast path being mistaken for a hardware fault (and its update applied)
    model, opt = make_fused()
    g = Guard(model, opt, "gated-poison", target=sidecar.target, device_gate=True, deadline=5.0, policy=QUICK)

    def poison(step, x, y):
        if step == 9:
            y = y.clone()
            y[0, 0] = float("nan")
        return x, y
    weights = {}
    torch.manual_seed(7)
    vs = run_loop(g, model, opt, 14, inject=poison, before=lambda s, w: weights.__setitem__(s, w))
    g.close()
    assert vs[9].device_gated and vs[9].fault_class == "DETERMINISTIC"
    assert g.is_bad_batch(9) and not g.is_bad_batch(8)
    assert g.recovery.counters["deterministic"] == 1 and g.recovery.counters["replayed_updates"] == 0
    # step 9's update never happened: the weights step 10 started from are those step 9 started from
    assert all(torch.equal(a, b) for a, b in zip(weights[9], weights[10]))
    assert all(v.action in (Action.APPLY, Action.CLIP) for v in vs)
    msgs = [i["message"] for i in sidecar.run_info("gated-poison")["incidents"] if i["kind"] == "FAULT_REPLAYED"]
    assert any("DETERMINISTIC" in m and "data position 9" in m for m in msgs), msgs


def test_gated_fault_without_a_replay_callable_is_skipped_as_before(sidecar):
    # prevents: a loop that cannot re-yield its batch getting an exception or a changed outcome on the fast path
    model, opt = make_fused()
    g = Guard(model, opt, "gated-noreplay", target=sidecar.target, device_gate=True, deadline=5.0, policy=QUICK)
    weights = {}
    for step in range(12):
        x, y = batch(step)
        if step == 8:
            y = torch.full_like(y, float("nan"))
        weights[step] = [p.detach().clone() for p in model.parameters()]
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model)
    g.close()
    assert all(torch.equal(a, b) for a, b in zip(weights[8], weights[9]))
    assert g.recovery.counters["replays"] == 0 and g.recovery.counters["replay_unavailable"] == 1


def test_replay_budget_holds_on_the_device_gate(sidecar):
    # prevents: a run of bad batches on the fast path costing two extra passes per step without end
    model, opt = make_fused()
    g = Guard(model, opt, "gated-budget", target=sidecar.target, device_gate=True, deadline=5.0,
              policy=dict(QUICK, max_consecutive_skips=100), replay={"max_replays": 2, "window_steps": 100})

    def poison(step, x, y):
        return (x, torch.full_like(y, float("nan"))) if step in (8, 9, 10) else (x, y)
    torch.manual_seed(7)
    vs = run_loop(g, model, opt, 14, inject=poison)
    g.close()
    assert all(vs[s].device_gated for s in (8, 9, 10))
    assert [vs[s].fault_class for s in (8, 9, 10)] == ["DETERMINISTIC", "DETERMINISTIC", None]
    assert g.recovery.counters["replays"] == 2 and g.recovery.budget.refused == 1
