"""Regressions from the fifth to seventh sweeps of code written elsewhere (/tmp/sweep5-7): what a loop does
around the guard that it cannot fully see (a closure evaluated again inside the step, an optimizer
stepped inside backward or built after the Guard, a model cast after it, a second Guard on the run id),
and how the run's record and state follow (resume positions under accumulation, clips applied
locally, a halted run). Against the real sidecar jar, CPU loops."""
import time

import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from models import batch, make, weights_finite
from test_sweep_regressions import healthy_step


def test_a_closure_whose_later_evaluation_goes_nan_inside_the_step_has_its_update_undone(sidecar):
    # prevents: LBFGS' line search evaluating the closure again inside step() after the first, judged,
    # evaluation was healthy: a NaN there wrote NaN into the weights, which stayed (pytorch/examples'
    # time_sequence_prediction with a bad batch)
    model, _ = make()
    ref, _ = make()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
    ref_opt = torch.optim.LBFGS(ref.parameters(), lr=0.5, max_iter=3)
    g = Guard(model, opt, f"sweep-closure-later-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False)
    wopt = g.wrap(opt)
    for step in range(12):
        x, y = batch(step)
        evaluations = [0]

        def closure(m=model, o=wopt):
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            evaluations[0] += 1
            if step == 6 and evaluations[0] == 2:  # the first evaluation inside LBFGS' own loop
                loss = loss * float("nan")
            loss.backward()
            return loss

        def ref_closure():
            ref_opt.zero_grad()
            loss = torch.nn.functional.mse_loss(ref(x), y)
            loss.backward()
            return loss
        wopt.step(closure)
        if step != 6:  # the reference skips the step whose update the guard undid
            ref_opt.step(ref_closure)
        assert weights_finite(model), f"non-finite weights after step {step}"
    g.close()
    assert g.counters["updates_undone"] == 1
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_a_rollback_under_gradient_accumulation_resumes_past_the_micro_batches_that_triggered_it(sidecar):
    # prevents: resume_position = the checkpoint's position (counted in micro-batches, as the loop passes it)
    # plus a skip counted in optimizer steps: the loop re-read the poisoned micro-batches until the run halted
    accum, poisoned = 4, range(60, 76)  # micro-batches 60..75: the optimizer steps 15..18
    model, opt = make()
    g = Guard(model, opt, f"sweep-accum-resume-{time.time_ns()}", target=sidecar.target, deadline=5.0, mode="sync",
              replay=False, policy={"max_consecutive_skips": 2, "known_good_healthy_steps": 2},
              snapshots={"interval": 5, "max_overhead": 0})
    step, pos, plan = 0, 0, None
    while step < 25:
        for _ in range(accum):
            x, y = batch(pos)
            if pos in poisoned:
                x = x * float("nan")
            (torch.nn.functional.mse_loss(model(x), y) / accum).backward()
            pos += 1
        v = g.step(step, None, data_position=pos)
        g.optimizer_step()
        opt.zero_grad()
        assert weights_finite(model)
        if v.action == Action.ROLLBACK and plan is None:
            plan = v.rollback
            step, pos = v.resume_step, plan.resume_position
            continue
        step += 1
    g.close()
    assert plan is not None and plan.resume_position >= 68, plan  # past the trigger step's micro-batches
    assert g.counters["rollbacks"] == 1, g.counters


@pytest.mark.torch2  # register_post_accumulate_grad_hook: torch >= 2.1
def test_an_optimizer_stepped_inside_backward_is_said_at_the_first_step_as_unguardable(sidecar):
    # prevents: torchtune's optimizer_in_bwd (an optimizer per parameter, stepped in a post-accumulate-grad
    # hook) guarded silently: every step judged on cleared gradients, a NaN "skipped" after it reached the weights
    import warnings
    model, _ = make()
    optims = {p: torch.optim.AdamW([p], lr=1e-2) for p in model.parameters()}

    def step_in_backward(p):
        optims[p].step()
        optims[p].zero_grad(set_to_none=True)
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(step_in_backward)
    g = Guard(model, None, f"sweep-opt-in-bwd-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            x, y = batch(step)
            torch.nn.functional.mse_loss(model(x), y).backward()
            g.step(step, None)
    g.close()
    said = [str(w.message) for w in caught if "inside backward" in str(w.message)]
    assert len(said) == 1 and "cannot be skipped" in said[0], said
    model2, opt2 = make()
    g2 = Guard(model2, opt2, f"sweep-opt-after-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
               failure_mode="closed")
    healthy_step(g2, model2, opt2, 0)  # an ordinary loop: nothing said, nothing raised
    g2.close()


def test_a_run_the_guard_halts_inside_with_guard_stays_halted_for_the_operator(sidecar):
    # prevents: `with Guard(...)` closing a run the guard had halted: no HALTED state for the health group and
    # the alert, `trainguard resume` refused (409: CLOSED), the restarted trainer refused (RunRefused)
    from trainguard import TrainingHalted
    run = f"sweep-halt-with-{time.time_ns()}"
    model, opt = make()
    with pytest.raises(TrainingHalted) as halted:
        with Guard(model, opt, run, target=sidecar.target, deadline=5.0, mode="sync", replay=False, snapshots=False,
                   policy={"max_consecutive_skips": 1, "max_rollbacks": 0}) as g:
            for step in range(6):
                x, y = batch(step)
                if step >= 2:
                    x = x * float("nan")
                torch.nn.functional.mse_loss(model(x), y).backward()
                g.step(step, None)
                g.optimizer_step()
                opt.zero_grad()
    assert "trainguard resume" in str(halted.value), str(halted.value)
    assert sidecar.run_info(run)["run"]["state"] == "HALTED"


def test_in_async_mode_the_sidecars_record_of_clips_is_what_the_client_applied(sidecar):
    # prevents: the sidecar re-running its adaptive clip rule on steps the client had decided (and applied)
    # with older bounds, recording CLIPs no update saw (72 recorded, 33 applied, over 150 PERCENTILE steps)
    run = f"sweep-clip-record-{time.time_ns()}"
    model, opt = make()
    g = Guard(model, opt, run, target=sidecar.target, deadline=5.0, replay=False, policy={"clip_mode": "PERCENTILE"})
    wopt = g.wrap(opt)
    clipped = []
    for step in range(120):
        x, y = batch(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        if g.step(step, None).action == Action.CLIP:
            clipped.append(step)
        wopt.step()
        wopt.zero_grad()
    g.close()
    buckets = sidecar.get(f"/api/runs/{run}/steps?points=120")["steps"]["buckets"]
    recorded = sorted(b["firstStep"] for b in buckets if b.get("clips", 0) > 0)
    assert clipped and g.counters["local_decisions"] > 0
    assert recorded == clipped, (recorded, clipped)


def test_a_second_optimizer_built_after_the_guard_gets_no_vetoed_gradients_and_is_named(sidecar, caplog):
    # prevents: a new AdamW over all parameters after unfreezing, stepped by the loop, applying a SKIPped step's
    # NaN gradients to the parameters the Guard's optimizer does not hold (the weights went NaN, nothing said)
    import logging
    model, _ = make()
    head = list(model.parameters())[-2:]
    opt = torch.optim.AdamW(head, lr=1e-2)
    g = Guard(model, opt, f"sweep-new-opt-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
              snapshots=False)
    new = torch.optim.AdamW(model.parameters(), lr=1e-2)  # built after the Guard, when unfreezing
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        for step in range(6):
            x, y = batch(step)
            if step == 4:
                x = x * float("nan")
            torch.nn.functional.mse_loss(model(x), y).backward()
            v = g.step(step, None)
            new.step()
            new.zero_grad()
            assert weights_finite(model), f"non-finite weights after step {step} ({v.action.name})"
    g.close()
    said = [r.getMessage() for r in caplog.records if "not in the optimizer this Guard was built with" in r.getMessage()]
    assert len(said) == 1, said
    with pytest.raises(ValueError, match="needs a Guard of its own"):
        g.wrap(new)


def test_a_run_closed_under_a_live_guard_is_said_in_words_and_training_goes_on(sidecar, monkeypatch):
    # prevents: a stale Guard with the same run id (a notebook cell run twice) closing the run, and the live
    # Guard's periodic reopen raising RunRefused mid-run in fail-open mode
    import warnings
    from trainguard import connection
    monkeypatch.setattr(connection, "REOPEN_EVERY_S", 0.05)
    run = f"sweep-closed-under-{time.time_ns()}"
    model, opt = make()
    stale = Guard(model, opt, run, target=sidecar.target, deadline=5.0, replay=False, snapshots=False)
    live = Guard(model, opt, run, target=sidecar.target, deadline=5.0, replay=False, snapshots=False, mode="sync")
    stale.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(8):
            healthy_step(live, model, opt, step)
            time.sleep(0.06)
    live.close()
    said = [str(w.message) for w in caught if "was closed under this Guard" in str(w.message)]
    assert len(said) == 1 and "its own run id" in said[0], [str(w.message) for w in caught]


def test_a_model_cast_after_the_guard_was_built_is_said_once(sidecar, caplog):
    # prevents: model.half() after the Guard silently leaving the pre-flight audit and update protection as
    # decided for float32 (a NaN update reached the weights with nothing said)
    import logging
    model, opt = make()
    g = Guard(model, opt, f"sweep-cast-after-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
              snapshots=False)
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        for step in range(4):
            if step == 0:  # before the optimizer made its state (AdamW's moments keep their dtype)
                model.double()
            x, y = batch(step)
            torch.nn.functional.mse_loss(model(x.to(next(model.parameters()).dtype)),
                                         y.to(next(model.parameters()).dtype)).backward()
            g.step(step, None)
            g.optimizer_step()
            opt.zero_grad()
    g.close()
    said = [r.getMessage() for r in caplog.records if "when this Guard was built" in r.getMessage()]
    assert len(said) == 1 and "torch.float64 now, torch.float32" in said[0], said


@pytest.mark.parametrize("built_on", ["inner", "wrapper"])
def test_wrappers_kept_from_a_closed_guard_follow_the_new_guard_built_on_the_same_optimizer(sidecar, caplog,
                                                                                          built_on):
    # prevents: a notebook (or a loop that builds a new Guard after close(), a new run id) keeping the
    # wrapped optimizer and scheduler it built once: they still obeyed the closed Guard ("guard closed":
    # APPLY), so the schedule advanced on the new Guard's skips and no update protection ran
    import logging
    model, opt = make()
    g1 = Guard(model, opt, f"sweep-stale-wrap-a-{time.time_ns()}", target=sidecar.target, deadline=5.0,
               mode="sync", replay=False, snapshots=False)
    wopt = g1.wrap(opt)
    sched = g1.wrap(torch.optim.lr_scheduler.LambdaLR(wopt, lambda k: 1.0 / (1 + k)))
    def one_step(g, step, nan=False):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y) * (float("nan") if nan else 1.0)
        loss.backward()
        v = g.step(step, loss)
        wopt.step()
        sched.step()
        wopt.zero_grad()
        return v
    for step in range(3):
        one_step(g1, step)
    g1.close()
    # a notebook holds the wrapper under the optimizer's name: Guard(model, opt) is then built on it
    g2 = Guard(model, opt if built_on == "inner" else wopt, f"sweep-stale-wrap-b-{time.time_ns()}",
               target=sidecar.target, deadline=5.0, mode="sync", replay=False, snapshots=False)
    assert g2.optimizer is opt
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        for step in range(3, 9):
            v = one_step(g2, step, nan=step == 5)
            assert weights_finite(model)
            assert (v.action == Action.SKIP) == (step == 5), v
    g2.close()
    assert sched.last_epoch == 8  # 3 + 6 steps, less the one skipped: the schedule followed g2's verdicts
    assert g2.scheduler is sched.scheduler  # and g2 restores it on a rollback
    said = [r.message for r in caplog.records if "now follows the Guard of run" in r.message]
    assert len(said) == 2 and {"GuardedOptimizer", "GuardedScheduler"} == {m.split()[2] for m in said}, said


def test_a_snapshot_that_finds_the_optimizer_state_corrupted_names_the_tensor_and_files_it(sidecar, caplog):
    # prevents: an Inf written into Adam's exp_avg_sq by a fault (the loss and gradients stay finite, one
    # weight stops moving) said only as "snapshot of step N holds non-finite values; discarded", with no
    # incident, while every later snapshot was discarded for it and the rollback targets aged
    import logging
    model, opt = make()
    g = Guard(model, opt, f"sweep-state-inf-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
              mode="sync", snapshots={"interval": 2, "max_overhead": 0}, policy={"known_good_healthy_steps": 2})
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        for step in range(12):
            healthy_step(g, model, opt, step)
            if step == 4:
                opt.state[model.inp.weight]["exp_avg_sq"][0, 0] = float("inf")
            assert weights_finite(model)
        g.close()
    said = [r.getMessage() for r in caplog.records if "is non-finite in the live training state" in r.getMessage()]
    assert len(said) == 1 and "optimizer state exp_avg_sq of inp.weight" in said[0], caplog.text
    incidents = [i["message"] for i in sidecar.run_info(g.run)["incidents"]]
    assert any("optimizer state exp_avg_sq of inp.weight" in m for m in incidents), incidents


@pytest.mark.parametrize("corrupt", ["weight", "lr"])
def test_a_non_finite_step_says_what_was_non_finite_before_it(sidecar, caplog, corrupt):
    # prevents: NaN weights (a fault between steps) or an LR a scheduler made inf said only as "non-finite
    # values first appeared in module 'inp'", while the skips that followed could not repair either
    import logging
    model, opt = make()
    g = Guard(model, opt, f"sweep-corrupt-{corrupt}-{time.time_ns()}", target=sidecar.target, deadline=5.0,
              replay=False, mode="sync", snapshots=False)
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        for step in range(6):
            if step == 3:
                if corrupt == "weight":
                    with torch.no_grad():
                        model.inp.weight[0, 0] = float("nan")
                else:
                    opt.param_groups[0]["lr"] = float("inf")
            healthy_step(g, model, opt, step)
    g.close()
    said = [r.getMessage() for r in caplog.records if "skipping steps cannot repair that" in r.getMessage()]
    want = "parameter inp.weight was already non-finite" if corrupt == "weight" else "param group 0's learning rate is inf"
    assert said and want in said[0], caplog.text
