"""guard.wrap(optimizer), manual update loops and checkpoint_saved, against the real sidecar jar.

Every loop asserts that the weights are finite after every step, and that a skipped step left the
weights exactly as they were."""
import os

import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from models import batch, make, weights_finite

FAST = {"known_good_healthy_steps": 5, "validation_warmup_steps": 5, "validation_interval_steps": 5}


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def nan_loss(step, y, at):
    if step in at:
        y = y.clone(); y[0, 0] = float("nan")
    return y


def test_wrapped_optimizer_skips_a_nan_step_in_a_loop_that_calls_opt_step(sidecar):
    # prevents: a loop that calls optimizer.step() itself applying a NaN update the guard judged SKIP
    model, opt = make()
    g = Guard(model, opt, "wrap-plain", target=sidecar.target, deadline=2.0, policy=FAST)
    wopt = g.wrap(opt)
    sched = torch.optim.lr_scheduler.StepLR(wopt, step_size=5, gamma=0.5)  # built on the wrapper
    verdicts = {}
    for step in range(20):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), nan_loss(step, y, {8}))
        loss.backward()
        before = snapshot(model)
        verdicts[step] = g.step(step, loss)
        wopt.step()
        sched.step()
        wopt.zero_grad()
        assert weights_finite(model), f"non-finite weights after step {step}"
        if step == 8:
            assert same(before, snapshot(model)), "a skipped step changed the weights"
    g.close()
    assert verdicts[8].action == Action.SKIP
    assert all(v.should_step for s, v in verdicts.items() if s != 8)
    assert len(opt.state) > 0 and wopt.state is opt.state and wopt.param_groups is opt.param_groups


def test_wrapped_step_without_guard_step_judges_the_step_itself(sidecar):
    # prevents: a framework that calls opt.step() without guard.step() running the update unguarded
    model, opt = make()
    g = Guard(model, opt, "wrap-auto", target=sidecar.target, deadline=2.0, policy=FAST)
    wopt = g.wrap(opt)
    handle = []
    skipped = []
    for step in range(15):
        x, y = batch(step)
        if step == 6:
            handle.append(model.out.weight.register_hook(lambda grad: grad * float("inf")))
        elif handle:
            handle.pop().remove()
        torch.nn.functional.mse_loss(model(x), y).backward()
        before = snapshot(model)
        wopt.step()
        if g.last_verdict.action == Action.SKIP:
            skipped.append(g.last_step)
            assert same(before, snapshot(model))
        wopt.zero_grad()
        assert weights_finite(model), f"non-finite weights after step {step}"
    g.close()
    assert skipped == [6] and g.counters["steps"] == 15


@pytest.mark.torch2
def test_wrapped_optimizer_under_gradscaler_unscales_once_and_skips_nan(sidecar):
    # prevents: scaler.step(wrapper) unscaling the gradients a second time after guard.step did

    def run():
        model, opt = make(opt="sgd", lr=0.05)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        g = Guard(model, opt, "wrap-scaler", target=sidecar.target, deadline=2.0, scaler=scaler,
                  policy=dict(FAST, clip_mode="OFF"))
        wopt = g.wrap(opt)
        out = {}
        for step in range(12):
            x, y = batch(step)
            loss = torch.nn.functional.mse_loss(model(x), nan_loss(step, y, {5}))
            scaler.scale(loss).backward()
            out[step] = g.step(step, loss)
            scaler.step(wopt)
            scaler.update()
            wopt.zero_grad()
            assert weights_finite(model)
            if step == 4:
                out["w4"] = snapshot(model)
        g.close()
        return model, out

    m_g, out = run()
    assert out[5].action == Action.SKIP and weights_finite(m_g)
    # unscaled exactly once: up to step 4 the weights match plain SGD on the true gradients
    ref4 = _sgd_reference(4)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(out["w4"], ref4))


def _sgd_reference(last_step):
    model, opt = make(opt="sgd", lr=0.05)
    for step in range(last_step + 1):
        x, y = batch(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return snapshot(model)


def test_manual_update_loop_without_an_optimizer(sidecar):
    # prevents: a hand-written update (no torch.optim) applying NaN gradients; should_step is the gate
    torch.manual_seed(0)
    model, _ = make()
    g = Guard(model, None, "wrap-manual", target=sidecar.target, deadline=2.0, policy=FAST)
    lr = 1e-2
    verdicts = {}
    for step in range(15):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), nan_loss(step, y, {4, 9}))
        loss.backward()
        v = verdicts[step] = g.step(step, loss)
        if v.should_step:
            with torch.no_grad(), g.protected_update():
                for p in model.parameters():
                    p -= lr * p.grad
        for p in model.parameters():
            p.grad = None
        assert weights_finite(model), f"non-finite weights after step {step}"
    g.close()
    assert [s for s, v in verdicts.items() if not v.should_step] == [4, 9]


def test_checkpoint_saved_registers_files_written_by_torch_save_and_safetensors(sidecar):
    # prevents: checkpoints the trainer writes itself being invisible to the sidecar (no known-good)
    from trainguard.safetensors_io import write_safetensors
    model, opt = make()
    g = Guard(model, opt, "wrap-ckpt", target=sidecar.target, deadline=2.0, policy=FAST)
    root = os.path.join(sidecar.checkpoint_root, "wrap-ckpt")
    os.makedirs(root, exist_ok=True)
    pt = os.path.join(root, "step3.pt")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, pt)
    c_pt = g.checkpoint_saved(pt, 3, data_position=4)
    st_dir = os.path.join(root, "step5")
    os.makedirs(st_dir)
    write_safetensors(model.state_dict(), os.path.join(st_dir, "model.safetensors"))
    torch.save({"optimizer": opt.state_dict()}, os.path.join(st_dir, "optim.pt"))
    c_st = g.checkpoint_saved(st_dir, 5)
    with pytest.raises(Exception, match="no such file"):
        g.checkpoint_saved(os.path.join(root, "missing.pt"), 7)
    g.close()
    assert c_pt is not None and c_pt["step"] == 3 and c_pt["checkpoint_id"]
    assert c_st is not None and c_st["step"] == 5 and c_st["checkpoint_id"]
    assert g.checkpoints[3]["dir"] == pt and g.checkpoints[5]["files"][0].endswith("model.safetensors")
    steps = sorted(c["step"] for c in sidecar.run_info("wrap-ckpt")["checkpoints"])
    assert steps == [3, 5]


def test_a_wrapped_scheduler_stepped_once_per_process_holds_every_call_of_a_skipped_step(sidecar):
    # Prevents: Accelerate's scheduler (split_batches=False) stepping the wrapped one once per process
    # for each update: only the first call of a skipped step was held back, so on N processes a skip
    # still advanced the schedule by N - 1.
    import time
    model, opt = make()
    g = Guard(model, opt, f"sched-per-process-{time.time_ns()}", target=sidecar.target, deadline=5.0)
    wopt = g.wrap(opt)
    sched = g.wrap(torch.optim.lr_scheduler.LambdaLR(wopt, lambda k: 1.0))
    epochs = []
    for step in range(8):
        x, y = batch(step)
        if step == 5:
            y = y * float("nan")
        torch.nn.functional.mse_loss(model(x), y).backward()
        g.step(step, None)
        wopt.step()
        sched.step()
        sched.step()  # the second process's share
        wopt.zero_grad()
        epochs.append(sched.last_epoch)
    g.close()
    assert epochs == [2, 4, 6, 8, 10, 10, 12, 14]
