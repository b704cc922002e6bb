"""The device gate (no host sync per step), exercised on the CPU: fused AdamW on the CPU honours
``found_inf``/``grad_scale`` like the CUDA kernel, so the gate's logic is tested here; only its
timing needs a GPU (bench/gpu/overhead.py)."""
import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from trainguard.measure import DeviceGate
from fake_sidecar import FakeSidecar
from models import MLP, batch, weights_finite


# Fused AdamW on the CPU (torch >= 2.4) is what lets the gate's logic run without a GPU; torch 1.13
# has neither it nor the device gate, so scripts/run-tests.sh runs this module on the current-torch
# stack only (test_client_unit.py checks that older torch falls back to the host path).
pytestmark = pytest.mark.torch2


@pytest.fixture
def fake():
    s = FakeSidecar(max_grad_norm=100.0, clip=1.0)
    s.start()
    yield s
    s.stop()


def make_fused(lr=1e-2, seed=0):
    torch.manual_seed(seed)
    model = MLP()
    return model, torch.optim.AdamW(model.parameters(), lr=lr, fused=True)


def one_step(g, model, opt, step, x=None, y=None, scale=1.0):
    if x is None:
        x, y = batch(step)
    loss = torch.nn.functional.mse_loss(model(x) * scale, y)
    loss.backward()
    v = g.step(step, loss)
    g.optimizer_step()
    opt.zero_grad()
    return v


def test_healthy_steps_are_device_gated_and_all_reported(fake):
    model, opt = make_fused()
    g = Guard(model, opt, "gate-healthy", target=fake.target, device_gate=True, deadline=5.0)  # all 20 reports must arrive, also on a loaded machine
    assert g.device_gate
    outs = {n: [] for n in g.watch.names}  # every watched call's own max |output|, step by step
    for n, m in model.named_modules():
        if n in outs:
            m.register_forward_hook(lambda mod, i, o, n=n: outs[n].append(float(o.detach().abs().max())))
    vs = [one_step(g, model, opt, s) for s in range(20)]
    assert g.flush(5)
    assert all(v.device_gated and v.action == Action.APPLY for v in vs)
    assert [r.step for r in fake.reports] == list(range(20))
    r = fake.reports[0]
    assert r.decided_locally and list(r.module_stats.finite) == [True] * 4
    for r in fake.reports[:3]:  # the probe's step, then batched ones: the values each call's output had
        assert list(r.module_stats.max_abs) == [outs[n][r.step] for n in r.module_stats.names]
    assert r.module_stats.names[:2] == ["inp", "blocks.0"]
    assert g.counters["device_gated_steps"] == 20 and g.counters["local_decisions"] == 20
    g.close()
    assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")


def test_nan_never_reaches_weights_nor_optimizer_state(fake):
    model, opt = make_fused()
    g = Guard(model, opt, "gate-nan", target=fake.target, device_gate=True)
    for s in range(3):
        one_step(g, model, opt, s)
    before = [p.detach().clone() for p in model.parameters()]
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    steps = [opt.state[p]["step"].clone() for p in model.parameters()]
    x, y = batch(3)
    y = y.clone(); y[0, 0] = float("nan")
    v = one_step(g, model, opt, 3, x, y)
    assert v.device_gated  # provisional on the host; the optimizer skipped on the device
    assert weights_finite(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.equal(a, opt.state[p]["exp_avg"]) for a, p in zip(moments, model.parameters()))
    assert all(torch.equal(a, opt.state[p]["step"]) for a, p in zip(steps, model.parameters()))
    assert g.flush(5)
    bad = [r for r in fake.reports if r.step == 3][0]
    assert not bad.decided_locally and g.counters["skips"] == 1
    one_step(g, model, opt, 4)  # the next healthy step updates again
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    g.close()


def test_nan_inside_a_block_is_flagged_and_skipped(fake):
    model, opt = make_fused()
    g = Guard(model, opt, "gate-mod", target=fake.target, device_gate=True)
    one_step(g, model, opt, 0)
    h = model.blocks[1][0].register_forward_hook(lambda m, i, o: o * float("nan"))
    before = [p.detach().clone() for p in model.parameters()]
    one_step(g, model, opt, 1)
    h.remove()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert g.flush(5)
    r = [r for r in fake.reports if r.step == 1][0]
    assert dict(zip(r.module_stats.names, r.module_stats.finite))["blocks.1"] is False
    g.close()


def test_clip_on_the_device_matches_clip_grad_norm(fake):
    # Same model, same batch: a device-gated step must move the weights exactly as
    # clip_grad_norm_(threshold) + fused AdamW does.
    ref, ropt = make_fused(lr=1e-1)
    model, opt = make_fused(lr=1e-1)
    g = Guard(model, opt, "gate-clip", target=fake.target, device_gate=True, watch=None)
    x, y = batch(0)
    torch.nn.functional.mse_loss(ref(x) * 100, y).backward()
    n = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    assert float(n) > 1.0
    ropt.step()
    one_step(g, model, opt, 0, x, y, scale=100)
    for a, b in zip(ref.parameters(), model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert g.flush(5) and g.counters["clips"] == 1
    g.close()


@pytest.mark.parametrize("loop_clip", [0.5, 2.0])  # the loop's clip below, then above the guard's 1.0
def test_a_loop_that_clips_itself_gets_the_smaller_clip_once(fake, loop_clip):
    # prevents: the gate's divisor, from the norm before the loop's clip_grad_norm_, applied inside
    # optimizer.step() on top of that clip (a step both clip divided twice)
    ref_model, model = make_fused()[0], make_fused()[0]  # the same initial weights
    ref = torch.optim.SGD(ref_model.parameters(), lr=1e-1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-1, fused=True)
    g = Guard(model, opt, f"gate-loop-clip-{loop_clip}", target=fake.target, device_gate=True, watch=None,
              clipping_configured=True)
    for s in range(3):
        x, y = batch(s)
        loss = torch.nn.functional.mse_loss(model(x) * 100, y)
        loss.backward()
        assert g.step(s, loss).device_gated
        torch.nn.utils.clip_grad_norm_(model.parameters(), loop_clip)
        g.optimizer_step()
        opt.zero_grad()
        # by hand: clipped once, to the smaller threshold
        torch.nn.functional.mse_loss(ref_model(x) * 100, y).backward()
        assert float(torch.nn.utils.clip_grad_norm_(ref_model.parameters(), min(1.0, loop_clip))) > max(1.0, loop_clip)
        ref.step()
        ref.zero_grad()
    for a, b in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    g.close()


def test_rollback_verdict_for_step_k_is_applied_at_step_k_plus_1(fake):
    model, opt = make_fused()
    g = Guard(model, opt, "gate-halt", target=fake.target, device_gate=True)
    fake.force[2] = 5  # HALT for step 2 (a divergence trend, say), decided by the sidecar later
    from trainguard import TrainingHalted
    for s in range(3):
        one_step(g, model, opt, s)
    with pytest.raises(TrainingHalted):
        one_step(g, model, opt, 3)
    g.close()


def test_unusable_bounds_fall_back_to_the_host_path_without_a_stale_gate(fake):
    model, opt = make_fused()
    g = Guard(model, opt, "gate-fallback", target=fake.target, device_gate=True)
    one_step(g, model, opt, 0)
    assert g.flush(5)  # step 0's verdict (with fresh bounds) is in before the bounds are voided
    from trainguard import LocalBounds
    g.bounds = LocalBounds()  # no limits: not usable, the sidecar must be asked
    v = one_step(g, model, opt, 1)
    assert not v.device_gated and not hasattr(opt, "found_inf")
    g.close()


def test_pause_removes_hooks_and_gate(fake):
    model, opt = make_fused()
    g = Guard(model, opt, "gate-pause", target=fake.target, device_gate=True)
    one_step(g, model, opt, 0)
    g.pause()
    assert not g.watch._handles and not hasattr(opt, "found_inf")
    g.resume()
    assert g.watch._handles
    one_step(g, model, opt, 1)
    assert hasattr(opt, "found_inf")
    g.close()


def test_device_gate_true_refuses_an_optimizer_that_cannot_skip_on_the_device(fake):
    model = MLP()
    opt = torch.optim.AdamW(model.parameters())  # not fused
    with pytest.raises(ValueError):
        Guard(model, opt, "gate-refuse", target=fake.target, device_gate=True)


def test_an_agreed_divisor_is_one_for_a_norm_beyond_float32_without_a_threshold(tmp_path):
    # prevents: a sharded global norm beyond float32's range (every rank's own norm finite) times the
    # 0 inverse of "no clip" making a NaN divisor the fused optimizer applies to every gradient
    import torch.distributed as dist
    from trainguard import distributed as agree
    model, opt = make_fused()
    gate = DeviceGate(opt, torch.device("cpu"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        no_threshold = agree.RankEntries(torch.device("cpu"), 1).of(0.0, 0)
        beyond = torch.tensor(1e39, dtype=torch.float64)  # finite in float64, inf in float32
        skip, norm, inverse, _ = agree.gate_collective(torch.tensor(False), torch.tensor(False), beyond, True,
                                                       no_threshold)
        gate.install_agreed(skip, norm, inverse)
        assert float(opt.grad_scale) == 1.0 and float(opt.found_inf) == 0.0
        clip = agree.RankEntries(torch.device("cpu"), 1).of(2.0, 0)
        skip, norm, inverse, _ = agree.gate_collective(torch.tensor(False), torch.tensor(False), torch.tensor(8.0),
                                                       True, clip)
        gate.install_agreed(skip, norm, inverse)
        assert float(opt.grad_scale) == 4.0  # a clip: max(norm, threshold) / threshold
    finally:
        dist.destroy_process_group()
        gate.uninstall()
    assert not hasattr(opt, "grad_scale")
