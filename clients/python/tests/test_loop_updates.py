"""Updates the loop makes itself, in the documented forms that bypass guard.optimizer_step() and the
wrapper: ``if v.should_step: optimizer.step()`` (the optimizer's step hooks) and a manual update loop
(``Guard(model, None)``: noted at the next step). Against the real sidecar: in-memory snapshots keep
their cadence, so a late NaN burst rolls back to a recent state, not the run's start, and the
re-warm LR after a rollback ramps for the loop's own optimizer.step()."""
import time

import pytest
import torch

from trainguard import Action, Guard

STEPS, BURST = 150, range(120, 124)
POLICY = {"known_good_healthy_steps": 5, "rollback_rewarm_steps": 10}


def loop(sidecar, form, steps=STEPS, on_update=None):
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    g = Guard(m, None if form == "manual" else opt, f"loop-updates-{form}-{time.time()}", target=sidecar.target,
              deadline=5.0, policy=POLICY, snapshots={"interval": 10, "max_overhead": 0})
    if on_update is not None:
        opt.register_step_pre_hook(on_update)  # after the guard's: sees the LR the update runs at
    rolled_to = None
    for step in range(steps):
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        loss = torch.nn.functional.mse_loss(m(x), y)
        if step in BURST:
            loss = loss * float("nan")
        loss.backward()
        v = g.step(step, loss)
        if v.action == Action.ROLLBACK:
            rolled_to = v.rollback.checkpoint_step
        if form == "optimizer_step":
            g.optimizer_step()
        elif form == "manual":
            if v.should_step:
                with torch.no_grad():
                    for p in m.parameters():
                        p -= 0.1 * p.grad
        elif v.should_step:
            opt.step()
        m.zero_grad(set_to_none=True)
    g.close()
    return g, rolled_to


@pytest.mark.parametrize("form", ["optimizer_step", "should_step", "manual"])
def test_a_loop_that_updates_itself_keeps_taking_snapshots_and_rolls_back_to_a_recent_one(sidecar, form):
    # prevents: one snapshot in a whole run (the start state), so a late rollback lost every step
    g, rolled_to = loop(sidecar, form)
    # more than the start state's (the bug: that one alone); how many more depends on how fast the sidecar
    # promotes each (one waits for the last to become known-good)
    assert g.recovery.counters["snapshots"] > 1, g.recovery.counters
    assert rolled_to is not None and rolled_to > 0, rolled_to  # -1: the state the run started from


@pytest.mark.torch2  # the optimizer's step hooks: torch >= 2.0
def test_the_loops_own_optimizer_step_after_a_rollback_runs_at_the_re_warm_lr(sidecar):
    # prevents: the first updates after a rollback running at the full (cut) rate in this loop form
    lrs = []
    g, rolled_to = loop(sidecar, "should_step", on_update=lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))
    assert rolled_to is not None
    first_after = next(i for i, lr in enumerate(lrs) if lr < 0.1)  # the first update after the rollback
    ramp = lrs[first_after:first_after + 5]
    assert all(a < b for a, b in zip(ramp, ramp[1:])) and ramp[-1] < 0.05, lrs
    assert lrs[0] == 0.1 and lrs[-1] == pytest.approx(0.05)  # the cut rate once re-warmed


@pytest.mark.torch2  # the optimizer's step hooks
@pytest.mark.parametrize("form", ["never", "every_other", "wrapper", "optimizer_step", "dropped"])
def test_updates_no_guard_step_judged_are_said_once(sidecar, form, caplog):
    # Prevents: a Guard built and a loop that never calls guard.step (or steps the inner optimizer
    # where a framework holds it, not the wrapper): every update went unguarded, silently. An update
    # with no gradient at all (Lightning steps after a training_step that returned None) is no such one.
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    g = Guard(m, opt, f"unjudged-{form}-{time.time()}", target=sidecar.target, deadline=5.0)
    wrapped = g.wrap(opt)
    with caplog.at_level("WARNING", logger="trainguard"):
        for step in range(6):
            loss = torch.nn.functional.mse_loss(m(torch.randn(16, 4)), torch.randn(16, 1))
            if form == "dropped" and step % 2:  # a batch the loop drops: no backward, an update of nothing
                opt.step()
                continue
            loss.backward()
            if form == "never":  # no guard.step at all
                opt.step()
            elif form == "every_other":  # the inner optimizer stepped, judged every other step only
                if step % 2 == 0:
                    g.step(step, loss)
                opt.step()
            elif form in ("wrapper", "dropped"):  # judged by the wrapper itself
                wrapped.step()
            else:
                g.step(step, loss)
                g.optimizer_step()
            opt.zero_grad(set_to_none=True)
    g.close()
    said = [r.getMessage() for r in caplog.records if "were not guarded" in r.getMessage()]
    if form in ("wrapper", "optimizer_step", "dropped"):
        assert said == []
    else:
        assert len(said) == 1, said
        assert "SGD.step() ran" in said[0] and "guard.wrap(optimizer)" in said[0]
