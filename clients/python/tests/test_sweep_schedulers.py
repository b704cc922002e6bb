"""Regressions found by the sweeps around LR schedulers, against the real sidecar: per-epoch and
metric schedulers through the wrapper and optimizer_step, a scheduler the guard found, several
schedulers on one optimizer."""
import time

import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from models import batch, make
from test_sweep_regressions import healthy_step

def test_a_wrapped_scheduler_stepped_per_epoch_steps_whatever_the_epochs_last_step_was(sidecar):
    # prevents: a once-per-epoch StepLR losing an epoch for good when the epoch's last batch was skipped
    model, opt = make()
    g = Guard(model, opt, "epoch-scheduler", target=sidecar.target, deadline=5.0, replay=False)
    wopt = g.wrap(opt)
    sched = g.wrap(torch.optim.lr_scheduler.StepLR(wopt, step_size=1, gamma=0.5))
    step = 0
    for epoch in range(4):
        for _ in range(4):
            x, y = batch(step)
            if step == 3:  # the first epoch's last batch
                y = torch.full_like(y, float("nan"))
            torch.nn.functional.mse_loss(model(x), y).backward()
            g.step(step, None)
            wopt.step()
            wopt.zero_grad()
            step += 1
        sched.step()
    g.close()
    assert g.counters["skips"] == 1 and sched.last_epoch == 4


def test_optimizer_step_leaves_a_metric_scheduler_to_the_loop(sidecar):
    # prevents: guard.optimizer_step() calling ReduceLROnPlateau.step() without its metric (a TypeError
    # after the weights were updated, the guard's after-update work skipped)
    model, opt = make()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=2)
    g = Guard(model, opt, "plateau-optimizer-step", target=sidecar.target, deadline=5.0, scheduler=plateau)
    x, y = batch(0)
    torch.nn.functional.mse_loss(model(x), y).backward()
    g.step(0, None)
    before = [p.detach().clone() for p in model.parameters()]
    assert g.optimizer_step()
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    plateau.step(1.0)  # the loop's own call, with its metric
    g.close()


def test_a_scheduler_the_loop_steps_itself_is_not_stepped_again_by_optimizer_step(sidecar):
    # prevents: a scheduler found on the optimizer (not handed to the Guard) stepped twice per step
    # when the loop calls guard.optimizer_step() and then its own scheduler.step()
    model, opt = make()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))
    g = Guard(model, opt, "found-scheduler-once", target=sidecar.target, deadline=5.0)
    for step in range(10):
        healthy_step(g, model, opt, step)
        sched.step()
    g.close()
    assert g.scheduler is sched and sched.last_epoch == 10


@pytest.mark.torch2  # the optimizer's step pre-hook records the LR each update ran at: torch >= 2.0
def test_a_rollbacks_lr_cut_holds_with_a_per_step_schedule_beside_a_plateau_scheduler(sidecar):
    # prevents: two schedulers on one optimizer making the guard attach neither: the per-step
    # LambdaLR recomputed the uncut rate at its next step() after the rollback's cut
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    g = Guard(m, opt, "two-schedulers", target=sidecar.target, deadline=5.0,
              policy={"known_good_healthy_steps": 3, "rollback_rewarm_steps": 0})
    wopt = g.wrap(opt)
    per_step = torch.optim.lr_scheduler.LambdaLR(wopt, lambda s: 1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(wopt, patience=100)
    used = []
    opt.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))
    for step in range(40):
        x, y = torch.randn(16, 4), torch.randn(16, 1)  # noise: a flat loss, no spike to judge
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss = loss * float("nan") if 20 <= step < 24 else loss
        loss.backward()
        g.step(step, loss)
        wopt.step()
        per_step.step()
        wopt.zero_grad()
        if step % 10 == 9:
            plateau.step(1.0)
    g.close()
    assert g.counters["rollbacks"] == 1 and g.lr_scale == 0.5
    assert used[-3:] == [0.05] * 3, used


class _TimmLike:
    """A scheduler as timm writes them: no torch LRScheduler, ``step_update(n)`` sets each group's LR
    from its own base (a linear warm-up here)."""

    def __init__(self, optimizer, base, warmup):
        self.optimizer, self.base, self.warmup = optimizer, base, warmup

    def step_update(self, num_updates):
        for grp in self.optimizer.param_groups:
            grp["lr"] = self.base * min(1.0, (num_updates + 1) / self.warmup)


@pytest.mark.parametrize("writer", ["get_lr", "timm", "decay"])
def test_a_rollbacks_lr_cut_holds_whatever_sets_the_lr_and_the_loops_own_rate_is_kept(sidecar, writer):
    # prevents: the cut written into the groups, undone by the loop's next write (nanoGPT's
    # g["lr"] = get_lr(it), timm's step_update) or compounded by a loop that multiplies the LR itself
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    g = Guard(m, opt, f"lr-writer-{writer}", target=sidecar.target, deadline=5.0,
              policy={"known_good_healthy_steps": 3, "rollback_rewarm_steps": 0})
    wopt = g.wrap(opt)
    timm = _TimmLike(opt, 0.1, warmup=10)
    ran = {}  # step -> (the loop's LR, the LR the update ran at)
    inner_step = opt.step
    opt.step = lambda *a, **k: (ran.__setitem__(step, (loop_lr, opt.param_groups[0]["lr"])), inner_step(*a, **k))[1]
    rolled_back_at = None
    for step in range(40):
        if writer == "get_lr":
            for grp in wopt.param_groups:
                grp["lr"] = 0.1 * min(1.0, (step + 1) / 10)
        elif writer == "timm":
            timm.step_update(step)
        else:
            for grp in wopt.param_groups:
                grp["lr"] *= 0.99
        loop_lr = opt.param_groups[0]["lr"]
        x, y = torch.randn(16, 4), torch.randn(16, 1)  # noise: a flat loss, no spike to judge
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss = loss * float("nan") if 20 <= step < 24 else loss
        loss.backward()
        v = g.step(step, loss)
        if v.action.name == "ROLLBACK":
            rolled_back_at = step
        wopt.step()
        wopt.zero_grad()
    g.close()
    assert g.counters["rollbacks"] == 1 and g.lr_scale == 0.5 and rolled_back_at is not None
    before = [used / loop for s, (loop, used) in ran.items() if s < 20]
    after = [used / loop for s, (loop, used) in ran.items() if s > rolled_back_at]
    assert before == [1.0] * len(before) and after and after == pytest.approx([0.5] * len(after)), ran
    # the loop's own rate is never cut in place (a cut there halves it: <= 0.05 for each writer here;
    # the decay restarts from the restored state's 0.099)
    assert min(loop for s, (loop, _) in ran.items() if s > rolled_back_at) > 0.08, ran


def _schedule(kind, opt):
    from torch.optim import lr_scheduler as L
    if kind == "warm-restarts":  # overrides step(): counts no _step_count, only last_epoch
        return L.CosineAnnealingWarmRestarts(opt, T_0=7)
    decay = L.LambdaLR(opt, lambda k: 0.9 ** k)
    return L.ChainedScheduler([decay]) if kind == "chained" else decay


@pytest.mark.parametrize("kind", ["lambda", "chained", "warm-restarts"])
def test_after_a_rollback_every_update_runs_at_the_clean_schedules_rate_for_its_step(sidecar, kind):
    # prevents: a ChainedScheduler (no last_epoch of its own) never stepped again after the restore,
    # so every update after a rollback ran at the rate of the step before, for the rest of the run
    # (and a CosineAnnealingWarmRestarts, which counts no _step_count, the same once it was counted so)
    clean_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    clean, expected = _schedule(kind, clean_opt), []
    for _ in range(40):
        expected.append(clean_opt.param_groups[0]["lr"])
        clean_opt.step()
        clean.step()
    model, _ = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = Guard(model, opt, f"sweep-sched-{kind}-{time.time_ns()}", target=sidecar.target, deadline=5.0,
              replay=False, mode="sync", snapshots={"interval": 5, "max_overhead": 0},
              policy={"known_good_healthy_steps": 2, "max_consecutive_skips": 1, "rollback_lr_factor": 1.0,
                      "rollback_rewarm_steps": 0})
    wopt = g.wrap(opt)
    sched = g.wrap(_schedule(kind, wopt))
    ran_at, step, pos, rolled_back = {}, 0, 0, False
    while step < 40:
        x, y = batch(pos)
        if not rolled_back and pos in (25, 26):
            x = x * float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        v = g.step(step, loss)
        if v.should_step:
            ran_at[step] = opt.param_groups[0]["lr"]
        wopt.step()
        sched.step()
        wopt.zero_grad()
        if v.action == Action.ROLLBACK:
            rolled_back, step, pos = True, v.resume_step, v.rollback.resume_position
            continue
        step, pos = step + 1, pos + 1
    g.close()
    assert rolled_back and g.counters["rollbacks"] == 1, g.counters
    wrong = {k: (lr, expected[k]) for k, lr in ran_at.items() if abs(lr - expected[k]) > 1e-12}
    assert not wrong, wrong
