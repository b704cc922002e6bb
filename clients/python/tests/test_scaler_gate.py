"""GradScaler (fp16 AMP) on the device gate, against the real sidecar jar, on the CPU (fused AdamW
reads found_inf/grad_scale there as on CUDA): the guard unscales once, ORs its skip flag into the
scaler's found-inf record, and the fused optimizer skips on either; a calibrating scaler's overflow
streak is skipped without an incident or a rollback; healthy steps match an unguarded GradScaler
run bit for bit."""
import pytest
import torch

from trainguard.guard import Guard
from models import MLP, batch, weights_finite
from sidecar_fixture import reported_losses

pytestmark = pytest.mark.torch2  # fused AdamW and GradScaler on the CPU

OVERFLOWS = (0, 1, 2, 3, 4)  # more than max_consecutive_skips (3) in a row
NAN_STEP = 9


def train(sidecar, name, steps=14, guarded=True, wrap=False, overflows=(), nan_steps=(), call_step=True):
    """A fused-AdamW loop under a GradScaler; an overflow step multiplies one gradient by inf (as a
    too-high loss scale does in fp16) with the loss and activations finite. ``call_step=False``: the
    loop never calls guard.step; the wrapper judges each step when GradScaler steps it."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = Guard(model, opt, name, target=sidecar.target, scaler=scaler, deadline=5.0,
              device_gate=True) if guarded else None
    stepped = g.wrap(opt) if wrap else opt
    now = {"step": -1}
    hook = model.out.weight.register_hook(lambda gr: gr * float("inf") if now["step"] in overflows else gr)
    weights, scales = [[p.detach().clone() for p in model.parameters()]], []
    for step in range(steps):
        now["step"] = step
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step in nan_steps:  # a NaN loss with finite gradients: the scaler alone would apply it
            loss = loss + torch.tensor(float("nan"))
        scales.append(scaler.get_scale())
        scaler.scale(loss).backward()
        if g is not None and call_step:
            g.step(step, loss)
        if g is not None and not wrap:
            g.optimizer_step()
        else:
            scaler.step(stepped)
            scaler.update()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"non-finite weights after step {step}"
        weights.append([p.detach().clone() for p in model.parameters()])
    hook.remove()
    out = {"weights": weights, "scales": scales}
    if g is not None:
        assert g.device_gate
        g.flush(5)
        out["counters"] = dict(g.counters)
        g.close()
    return out


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("wrap", [False, True], ids=["optimizer_step", "wrapper"])
def test_overflow_streak_and_a_nan_loss_are_skipped_on_the_device_without_a_rollback(sidecar, wrap):
    # prevents: fp16 runs halted by the scaler's own calibration, and a NaN loss applied because the
    # GradScaler replaced the gate's found_inf with its own (finite gradients: "no overflow")
    out = train(sidecar, f"scaler-gate-{wrap}", wrap=wrap, overflows=OVERFLOWS, nan_steps=(NAN_STEP,))
    w, c = out["weights"], out["counters"]
    for s in OVERFLOWS + (NAN_STEP,):
        assert same(w[s], w[s + 1]), f"step {s} changed the weights"
    assert not same(w[5], w[6]) and not same(w[NAN_STEP + 1], w[NAN_STEP + 2])  # training went on
    assert out["scales"][:6] == [1024.0, 512.0, 256.0, 128.0, 64.0, 32.0]  # the scaler saw each overflow
    assert c["rollbacks"] == 0 and c["device_gated_steps"] >= 12, c


def test_healthy_steps_match_an_unguarded_grad_scaler_run(sidecar):
    guarded = train(sidecar, "scaler-gate-healthy")
    plain = train(sidecar, "unused", guarded=False)
    assert guarded["counters"]["device_gated_steps"] >= 12
    for step, (a, b) in enumerate(zip(guarded["weights"], plain["weights"])):
        assert same(a, b), f"weights differ after step {step}"


def test_a_loop_that_leaves_the_step_to_the_wrapper_is_unscaled_once(sidecar):
    # prevents: GradScaler fixing found_inf/grad_scale on the wrapper before the wrapper's own
    # guard.step unscaled the gradients (unscaled twice, by a divisor growing every step)
    guarded = train(sidecar, "scaler-gate-wrapper-only", wrap=True, call_step=False, overflows=(3,))
    plain = train(sidecar, "unused", guarded=False, overflows=(3,))
    assert guarded["counters"]["steps"] == 14  # the overflow too: scaler.step judged it before skipping it
    for step, (a, b) in enumerate(zip(guarded["weights"], plain["weights"])):
        assert same(a, b), f"weights differ after step {step}"


def test_scaler_on_a_torch_that_drops_the_clip_divisor_keeps_the_host_path(sidecar, monkeypatch):
    # prevents: torch < 2.4's GradScaler.step replacing the gate's grad_scale (the clip) with None
    import trainguard.gated
    monkeypatch.setattr(trainguard.gated, "GRAD_SCALER_KEEPS_CLIP", False)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(ValueError, match="torch >= 2.4"):
        Guard(model, opt, "scaler-old-torch", target=sidecar.target, scaler=scaler, device_gate=True)
    g = Guard(model, opt, "scaler-old-torch-auto", target=sidecar.target, scaler=scaler, device_gate="auto")
    assert not g.device_gate
    g.close()
    # the control: where the GradScaler keeps the clip, the same Guard is on the device gate
    monkeypatch.setattr(trainguard.gated, "GRAD_SCALER_KEEPS_CLIP", True)
    g = Guard(model, opt, "scaler-new-torch", target=sidecar.target, scaler=scaler, device_gate=True)
    assert g.device_gate
    g.close()


def clip_block_run(sidecar, name, unscale):
    """A GradScaler loop with the usual clip block (``scaler.unscale_``, ``clip_grad_norm_``) after
    ``guard.step``; ``unscale``: which optimizer the block unscales ('inner', 'wrapper'); None: unguarded.
    Returns the weights after each step and the norms the clip saw."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = Guard(model, opt, name, target=sidecar.target, scaler=scaler, deadline=5.0) if unscale else None
    stepped = g.wrap(opt) if g else opt
    weights, norms = [], []
    for step in range(6):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if g is not None:
            g.step(step, loss)
        scaler.unscale_(opt if unscale in (None, "inner") else stepped)
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)))
        scaler.step(stepped)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        weights.append([p.detach().clone() for p in model.parameters()])
    if g is not None:
        g.close()
    return weights, norms


@pytest.mark.parametrize("unscale", ["inner", "wrapper"])
def test_a_loops_own_unscale_before_its_clip_is_the_guards_one(sidecar, unscale):
    # Prevents: scaler.unscale_(optimizer) in the loop's clip block dividing the gradients a second time
    # after guard.step had unscaled them (silently: the clip saw 1/1024 of the norm), or, on the wrapper,
    # raising "unscale_() has already been called".
    want_w, want_n = clip_block_run(sidecar, None, None)
    got_w, got_n = clip_block_run(sidecar, f"own-unscale-{unscale}", unscale)
    assert got_n == want_n
    assert all(same(a, b) for a, b in zip(got_w, want_w))


class NativeScalerCall:
    """The call form of timm's ``NativeScaler`` (timm.utils.cuda): backward, the clip block and the
    scaler's step in one call, so the loop has no moment for ``guard.step`` before the update."""

    def __init__(self, scaler):
        self._scaler = scaler

    def __call__(self, loss, optimizer, clip_grad=None, parameters=None):
        self._scaler.scale(loss).backward()
        if clip_grad is not None:
            self._scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
        self._scaler.step(optimizer)
        self._scaler.update()


@pytest.mark.parametrize("fused", [True, False], ids=["device-gate", "host-path"])
def test_a_nan_streak_under_a_scaler_that_steps_the_wrapper_reaches_the_guard(sidecar, fused):
    # Prevents: a loop with no guard.step (timm's NativeScaler) whose model makes NaN step after step:
    # GradScaler skipped each update without calling the wrapper's step(), so the guard never saw
    # one; the scale fell to 0.001 and nothing was said.
    from trainguard.errors import TrainingHalted
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
    loss_scaler = NativeScalerCall(torch.amp.GradScaler("cpu", init_scale=1024.0))
    g = Guard(model, opt, f"scaler-nan-streak-{fused}", target=sidecar.target, scaler=loss_scaler._scaler,
              deadline=5.0, device_gate=fused)
    stepped, halted_at = g.wrap(opt), None
    for step in range(30):
        x, y = batch(step)
        if step >= 10:  # the model's own NaN from here on, not a loss scale too high
            x = x * float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        try:
            loss_scaler(loss, stepped, clip_grad=1.0, parameters=model.parameters())
        except TrainingHalted:
            halted_at = step
            break
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"non-finite weights after step {step}"
    c = dict(g.counters)
    g.close()
    assert c["steps"] >= 13 and c["skips"] >= 3 and c["rollbacks"] >= 1, c
    assert halted_at is not None and halted_at >= 12, (halted_at, c)


@pytest.mark.parametrize("enabled", [True, False], ids=["fp16", "disabled"])
def test_the_loss_handed_to_scaler_scale_is_the_one_judged(sidecar, enabled):
    # Prevents: a step judged at scaler.step reported with its loss absent (the sidecar then judges
    # the gradients alone: a loss spike on such a run is never seen); a disabled scaler (nanoGPT
    # under bf16) is called all the same
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=enabled)
    run = f"scaler-loss-judged-{enabled}"
    # a Guard closed before on the same scaler (a Trainer's train() called twice) leaves it to this one
    Guard(model, opt, f"{run}-before", target=sidecar.target, scaler=scaler, deadline=5.0).close()
    g = Guard(model, opt, run, target=sidecar.target, scaler=scaler, deadline=5.0)
    stepped, want = g.wrap(opt), {}
    for step in range(3):
        x, y = batch(step)
        parts = [torch.nn.functional.mse_loss(model(x[i::2]), y[i::2]) / 2 for i in range(2)]  # 2 micro-batches
        for part in parts:
            scaler.scale(part).backward()
        scaler.step(stepped)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        want[step] = float(parts[0]) + float(parts[1])
    g.flush(5)
    g.close()
    got = reported_losses(sidecar, run, 3)
    assert sorted(got) == [0, 1, 2], got
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=1e-6), (step, got[step], loss)
