"""Regressions found by the client sweep (/tmp/sweep-plain): loops written the common ways."""
import os
import time

import pytest
import torch

from trainguard import Action
from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
from trainguard.guard import Guard
from models import batch, make, weights_finite


def healthy_step(g, model, opt, step):
    """One step of the test model through guard.step and guard.optimizer_step."""
    x, y = batch(step)
    torch.nn.functional.mse_loss(model(x), y).backward()
    g.step(step, None)
    g.optimizer_step()
    opt.zero_grad()


def counting_loop(sidecar, run, numbers, burst):
    """A loop that keeps counting through a NaN burst (the loop's step numbers in ``burst``) and its
    ROLLBACK: the actions per step and the guard."""
    model, opt = make()
    g = Guard(model, opt, run, target=sidecar.target, deadline=5.0, policy={"max_consecutive_skips": 2}, replay=False)
    wopt = g.wrap(opt)
    actions = []
    for step in numbers:
        x, y = batch(step)
        if step in burst:
            y = torch.full_like(y, float("nan"))
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        actions.append(g.step(step, loss).action)
        wopt.step()
        wopt.zero_grad()
        assert weights_finite(model)
    g.close()
    return actions, g


def test_a_loop_that_does_not_jump_to_resume_step_is_renumbered_not_rolled_back_forever(sidecar):
    # prevents: `for step in range(n)` after a ROLLBACK getting the pending ROLLBACK (a restore) at every later step
    actions, g = counting_loop(sidecar, "sweep-no-jump", range(30), range(10, 13))
    assert actions.count(Action.ROLLBACK) == 1 and g.counters["rollbacks"] == 1, actions
    assert all(a == Action.APPLY for a in actions[14:]), actions


def test_a_closure_step_through_the_wrapper_judges_the_closures_gradients(sidecar):
    # prevents: opt.step(closure) judged before the closure ran (stale or no gradients): a NaN made
    # inside the closure reaching the weights, healthy steps skipped
    torch.manual_seed(0)
    model, _ = make()
    ref, _ = make()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    ref_opt = torch.optim.LBFGS(ref.parameters(), lr=0.5, max_iter=3)
    g = Guard(model, opt, "sweep-closure", target=sidecar.target, deadline=5.0, replay=False)
    wopt = g.wrap(opt)
    for step in range(12):
        x, y = batch(step)
        for m, o, guarded in ((model, wopt, True), (ref, ref_opt, False)):
            def closure(m=m, o=o, guarded=guarded):
                o.zero_grad()
                loss = torch.nn.functional.mse_loss(m(x), y)
                if guarded and step == 6:
                    loss = loss * float("nan")
                loss.backward()
                return loss
            if guarded or step != 6:
                o.step(closure)
        assert g.last_verdict.step == step and weights_finite(model)
        assert g.last_verdict.should_step == (step != 6), (step, g.last_verdict)
    g.close()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_a_nan_in_an_evaluation_forward_between_steps_does_not_skip_the_next_step(sidecar):
    # prevents: a no_grad forward of the whole model (validation, sampling) counted as the next step's
    model, opt = make()
    g = Guard(model, opt, "sweep-eval", target=sidecar.target, deadline=5.0, replay=False)
    for step in range(6):
        x, y = batch(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        assert g.step(step, None).action == Action.APPLY
        g.optimizer_step()
        opt.zero_grad()
        with torch.no_grad():
            bad = x.clone()
            bad[0, 0] = float("nan")
            model(bad)
    g.close()


def test_close_is_idempotent_and_guard_is_a_context_manager(sidecar):
    model, opt = make()
    with Guard(model, opt, "sweep-close", target=sidecar.target) as g:
        x, y = batch(0)
        torch.nn.functional.mse_loss(model(x), y).backward()
        g.step(0, None)
        g.optimizer_step()
    g.close()
    assert g.step(1, None).should_step  # after close: not guarded, no wait, no error


def test_after_close_updates_run_unguarded_and_the_sidecars_calls_say_so(sidecar, tmp_path):
    # prevents: step() after close() saying APPLY while the update obeyed the last SKIP before close;
    # pause/resume/validation/save_checkpoint failing with "Cannot invoke RPC on closed channel!"
    from trainguard.errors import TrainguardError
    model, opt = make()
    g = Guard(model, opt, "sweep-after-close", target=sidecar.target, deadline=5.0, replay=False)
    wopt = g.wrap(opt)
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x), torch.full_like(y, float("nan"))).backward()
    assert not g.step(0, None).should_step  # a SKIP, the last verdict before close
    wopt.step()
    g.close()
    before = [p.detach().clone() for p in model.parameters()]
    wopt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert g.step(1, None).should_step
    wopt.step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters())), "the update after close ran"
    g.pause()
    g.resume()  # no-ops
    with g.validation(model) as v:
        assert v.allowed
    try:
        g.save_checkpoint(str(tmp_path), 2)
        raise AssertionError("save_checkpoint after close must say the run is closed")
    except TrainguardError as e:
        assert "after close()" in str(e)


def test_a_loop_numbering_its_micro_batches_is_renumbered_once_after_a_rollback(sidecar):
    # prevents: a loop whose step numbers grow by 2 (guard.step every 2nd micro-batch) after a
    # ROLLBACK getting the pending ROLLBACK again at every later step
    actions, g = counting_loop(sidecar, "sweep-stride", range(0, 60, 2), range(20, 26))
    assert g.counters["rollbacks"] == 1, actions
    assert all(a == Action.APPLY for a in actions[14:]), actions


def test_a_batch_the_loop_drops_itself_is_not_charged_to_the_next_step(sidecar):
    # Prevents: `if not torch.isfinite(loss): continue` (detection and speech code) leaving the dropped
    # forward's NaN activations in the watch, so the next, healthy step was skipped as non-finite.
    model, opt = make()
    g = Guard(model, opt, "drops-its-own-nan", target=sidecar.target, deadline=5.0, replay=False)
    wopt = g.wrap(opt)
    actions, step = [], 0
    for it in range(8):
        x, y = batch(it)
        if it == 4:
            x = x * float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        if not torch.isfinite(loss):
            wopt.zero_grad(set_to_none=True)
            continue
        loss.backward()
        actions.append(g.step(step, loss).action)
        wopt.step()
        wopt.zero_grad(set_to_none=True)
        step += 1
    g.close()
    assert actions == [Action.APPLY] * 7
    # a NaN in a forward the backward does go through is still this step's
    x, y = batch(9)
    model2, opt2 = make()
    g2 = Guard(model2, opt2, "own-nan-still-judged", target=sidecar.target, deadline=5.0, replay=False)
    h = model2.blocks[0][0].register_forward_hook(lambda m, i, out: out * float("nan"))
    torch.nn.functional.mse_loss(model2(x), y).backward()
    h.remove()
    v = g2.step(0, torch.tensor(1.0))  # the loss passed finite: only the watch can tell
    g2.close()
    assert v.action == Action.SKIP and v.first_nonfinite_module == "blocks.0"


def test_a_wrong_step_or_loss_gets_an_error_that_says_what_to_pass(sidecar):
    # Prevents: errors from deep inside (protobuf's "'float' object cannot be interpreted as an integer",
    # "shape '[1]' is invalid for input of size 32") for a float step or a reduction="none" loss.
    import pytest
    model, opt = make()
    g = Guard(model, opt, "wrong-args", target=sidecar.target, deadline=5.0, replay=False)
    x, y = batch(0)
    loss = torch.nn.functional.mse_loss(model(x), y, reduction="none")
    loss.mean().backward()
    with pytest.raises(TypeError, match="step must be an integer"):
        g.step(0.0, loss.mean())
    with pytest.raises(ValueError, match=r"loss must be one value, got a tensor of shape \(32, 1\)"):
        g.step(0, loss)
    assert g.step(0, loss.mean()).action == Action.APPLY  # nothing was recorded by the refused calls
    g.close()


def test_a_float64_model_is_watched_and_its_nan_named(sidecar):
    # Prevents: the watch's float32 reduction raising inside the forward of a model.double()
    # (pytorch/examples' time_sequence_prediction), i.e. guarding it crashed the user's first step.
    model, opt = make(dtype=torch.float64)
    g = Guard(model, opt, "float64-model", target=sidecar.target, deadline=5.0, replay=False)
    h = model.blocks[1][0].register_forward_hook(lambda m, i, out: out * float("nan"))
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x.double()), y.double()).backward()
    h.remove()
    v = g.step(0, None)
    g.close()
    assert v.action == Action.SKIP and v.first_nonfinite_module == "blocks.1"


def test_a_guarded_model_can_be_saved_whole_and_deep_copied(sidecar, tmp_path):
    # Prevents: torch.save(model) (pytorch/examples' word_language_model) failing on the watch's hook
    # closures, and an EMA's deepcopy(model) calling the guard with the copy's outputs.
    import copy
    model, opt = make()
    g = Guard(model, opt, "saved-whole", target=sidecar.target, deadline=5.0, replay=False)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    ema = copy.deepcopy(model)
    x, y = batch(0)
    for m in (loaded, ema):  # their hooks are inert: nothing of theirs reaches the guard
        torch.nn.functional.mse_loss(m(x * float("nan")), y).backward()
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert g.step(0, None).action == Action.APPLY
    g.close()


def test_a_backlog_of_reports_ahead_of_a_blocking_one_does_not_take_the_client_offline(sidecar):
    # Prevents: a fast loop (~1 ms steps) whose reports queue up behind the one sender: the blocking
    # report (bounds expired) waited behind the backlog, its deadline ran out while the sidecar was
    # answering every report ahead of it, and the client went offline blaming the sidecar.
    model, opt = make()
    g = Guard(model, opt, "backlog", target=sidecar.target, deadline=0.3, replay=False)
    slow_call = g.sender._call
    g.sender._call = lambda request: (time.sleep(0.02), slow_call(request))[1]  # each report takes 20 ms
    for s in range(40):  # 0.8 s of reports queued ahead: past the deadline, each one answered
        g.sender.submit(pb.StepReport(run_id="backlog", step=s, loss=1.0, grad_norm=0.5), g.generation)
    from trainguard import host_path
    v = host_path.ask_sidecar(g, pb.StepReport(run_id="backlog", step=40, loss=1.0, grad_norm=0.5), 40, 0.5, True)
    assert not v.degraded and g.counters["sidecar_failures"] == 0 and not g.connection.offline
    g.close()


def test_a_spike_in_the_first_steps_reaches_the_sidecar_before_the_update(sidecar):
    # Prevents: OpenRun's bounds (no limit: the sidecar has no baseline yet) read as leave to decide
    # locally, so a x1e4 spike in the first steps of a fast loop was applied before any verdict came.
    for spike_at in (3, 10):
        model, opt = make()
        g = Guard(model, opt, f"early-spike-{spike_at}", target=sidecar.target, deadline=5.0, replay=False)
        actions = []
        for step in range(spike_at + 1):
            x, y = batch(step)
            loss = torch.nn.functional.mse_loss(model(x), y * (1e4 if step == spike_at else 1.0))
            loss.backward()
            actions.append(g.step(step, loss).action)
            g.optimizer_step()
            opt.zero_grad(set_to_none=True)
        g.close()
        assert actions[-1] == Action.SKIP, (spike_at, actions)


def test_a_manual_update_loop_judges_parameters_unfrozen_after_the_guard_was_built(sidecar):
    # prevents: a NaN gradient of a backbone unfrozen mid-run judged APPLY and written into the weights
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    m[0].requires_grad_(False)  # a frozen backbone
    g = Guard(m, None, "manual-unfrozen", target=sidecar.target, deadline=5.0)
    actions = {}
    for step in range(20):
        if step == 10:
            m[0].requires_grad_(True)  # unfrozen
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(m(x[:, :4]), y)
        loss.backward()
        if step == 15:
            m[0].weight.grad[0, 0] = float("nan")  # a non-finite gradient in the backbone only
        v = g.step(step, loss)
        actions[step] = v.action
        if v.should_step:
            with torch.no_grad():
                for p in m.parameters():
                    if p.grad is not None:
                        p -= 0.05 * p.grad
        m.zero_grad(set_to_none=True)
        assert weights_finite(m), f"non-finite weights after step {step}"
    g.close()
    assert actions[15] != Action.APPLY and actions[16] == Action.APPLY


def test_validation_at_the_loops_own_offset_is_allowed_once_per_interval(sidecar):
    # prevents: the gate allowing only steps that are multiples of the interval, so a nanoGPT-style
    # "if it % N == 0" at the top of the iteration (the guard's last step is it - 1) never validated
    model, opt = make()
    g = Guard(model, opt, "validation-offset", target=sidecar.target, deadline=5.0,
              policy={"validation_warmup_steps": 5, "validation_interval_steps": 10})
    allowed = {}
    for it in range(41):
        if it % 10 == 0:
            with g.validation(model) as v:
                allowed[it] = v.allowed
        healthy_step(g, model, opt, it)
    g.close()
    assert allowed == {0: False, 10: True, 20: True, 30: True, 40: True}, allowed


def test_a_disabled_grad_scaler_handed_to_the_guard_leaves_the_loops_unscale_a_no_op(sidecar):
    # prevents: nanoGPT's GradScaler(enabled=dtype == 'float16'), disabled under bf16 or on the CPU,
    # crashing the loop's own scaler.unscale_ with an AttributeError from the guard
    model, opt = make()
    scaler = torch.amp.GradScaler("cpu", enabled=False) if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler") \
        else torch.cuda.amp.GradScaler(enabled=False)
    g = Guard(model, opt, "disabled-scaler", target=sidecar.target, deadline=5.0, scaler=scaler, clipping_configured=True)
    wopt = g.wrap(opt)
    for step in range(3):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        g.step(step, loss)
        scaler.unscale_(wopt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(wopt)
        scaler.update()
        wopt.zero_grad()
    g.close()
    assert g.counters["steps"] == 3 and weights_finite(model)


def test_a_closure_step_the_guard_skips_returns_the_closures_loss(sidecar):
    # prevents: loss = opt.step(closure); loss.item() crashing on a skipped step (None returned)
    model, opt = make(opt="sgd")
    g = Guard(model, opt, "closure-skip-returns", target=sidecar.target, deadline=5.0, replay=False)
    wopt = g.wrap(opt)
    for step in range(4):
        x, y = batch(step)
        y = torch.full_like(y, float("nan")) if step == 2 else y

        def closure():
            wopt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        loss = wopt.step(closure)
        assert torch.is_tensor(loss), (step, loss)
    g.close()
    assert g.counters["skips"] == 1


@pytest.mark.torch2  # torch.optim.Adafactor: torch >= 2.5 (the current-torch stack)
def test_an_optimizer_without_a_fixed_epsilon_builds_its_guard(sidecar):
    # prevents: torch.optim.Adafactor (eps=(None, 1e-3)) crashing Guard() with a TypeError
    model, _ = make()
    g = Guard(model, torch.optim.Adafactor(model.parameters()), "adafactor", target=sidecar.target, deadline=5.0)
    g.close()


def test_resume_step_is_in_the_loops_numbering_after_the_guard_renumbered_it(sidecar):
    # Prevents: v.resume_step in the guard's numbering once it had renumbered the loop (a step taken
    # twice), so a loop jumping back to it skipped a step of its own and reported the one after
    model, opt = make()
    g = Guard(model, opt, f"resume-numbering-{time.time_ns()}", target=sidecar.target, deadline=5.0, mode="sync",
              snapshots=False, replay=False, policy={"known_good_healthy_steps": 3, "max_consecutive_skips": 2})
    root = os.path.join(sidecar.checkpoint_root, g.run)
    step, retried, resumed = 0, False, []
    while step < 30:
        x, y = batch(step)
        if step == 24 and not resumed:  # the burst comes once the checkpoint is a target (verified, 3 healthy steps)
            end = time.monotonic() + 60
            while not [c for c in sidecar.run_info(g.run)["checkpoints"] if c["state"] == "KNOWN_GOOD"]:
                assert time.monotonic() < end, sidecar.run_info(g.run)["checkpoints"]
                time.sleep(0.05)
        if 24 <= step < 27 and not resumed:
            y = torch.full_like(y, float("nan"))
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        v = g.step(step, loss)
        if step == 5 and not retried:  # the loop gave the step up and takes it again
            retried = True
            opt.zero_grad()
            continue
        g.optimizer_step()
        opt.zero_grad()
        if v.action == Action.ROLLBACK:
            resumed.append(v.resume_step)
            step = v.resume_step
            continue
        if step == 15:
            g.save_checkpoint(root, step)
        step += 1
    g.close()
    assert resumed == [16], resumed  # the loop's step after its own checkpoint's, not the guard's 17
    assert g.numbering.shift == -1 and g.last_step == 29 + 1  # the guard numbers one on since the retry
