"""LR cuts after a rollback against plain torch objects, no sidecar: measured from the uncut rate,
written into the schedule where a torch scheduler is known, applied at each update where none is
(the loops against the real sidecar: test_recovery.py, test_sweep_schedulers.py)."""
import pytest
import torch

from trainguard.lrcut import LrCuts, LrPolicy
from models import make


def _lr(opt):
    return opt.param_groups[0]["lr"]


def test_lr_cuts_are_taken_from_the_base_never_compounded():
    # prevents: the second cut applied to the already-cut rate (20 -> 10 -> 2.5 instead of 5)
    model, opt = make(lr=20.0, opt="sgd")
    cuts = LrCuts(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0))  # a scheduler: the cut is written in
    base_state = (dict(opt.state_dict()["param_groups"][0]), cuts.scale)
    cuts.on_rollback(1.0, 0.5, resume_step=5, rewarm_steps=0)
    assert _lr(opt) == pytest.approx(10.0)
    # attempt 2 restores a state saved before any cut (scale 1.0): 20 x 0.25
    opt.param_groups[0]["lr"] = base_state[0]["lr"]
    cuts.on_rollback(base_state[1], 0.25, resume_step=5, rewarm_steps=0)
    assert _lr(opt) == pytest.approx(5.0)
    # attempt 3 restores a state saved during attempt 1 (rate 10, scale 0.5): 20 x 0.125
    opt.param_groups[0]["lr"] = 10.0
    cuts.on_rollback(0.5, 0.125, resume_step=5, rewarm_steps=0)
    assert _lr(opt) == pytest.approx(2.5)


def test_without_a_scheduler_the_cut_is_applied_at_each_update_and_the_groups_keep_the_loops_lr():
    # prevents: a cut written into the groups, which a loop that sets the LR itself (nanoGPT's
    # get_lr, timm's schedulers) overwrites at its next write, or a multiplying one carries on cut
    model, opt = make(lr=20.0, opt="sgd")
    cuts = LrCuts(opt)
    cuts.on_rollback(1.0, 0.5, resume_step=5, rewarm_steps=2)
    assert _lr(opt) == 20.0 and cuts.scale == 0.5
    assert [cuts.update_factor(s) for s in (5, 6, 7)] == [0.25, 0.5, 0.5]  # the re-warm ramp, then the cut
    cuts.on_rollback(0.5, 0.25, resume_step=9, rewarm_steps=0)  # a restored state's LRs are the loop's: uncut
    assert _lr(opt) == 20.0 and cuts.update_factor(9) == 0.25
    cuts.attach(torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0))  # from now on written in
    assert _lr(opt) == pytest.approx(5.0) and cuts.update_factor(10) is None


def test_lr_cut_scales_the_schedule_and_restore_ramp_lifts_it():
    # prevents: a scheduler overwriting the cut on its next step, and a restore that jumps at once
    model, opt = make(lr=1.0, opt="sgd")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0 / (1 + e))
    cuts = LrCuts(opt, sched, LrPolicy(restore_after=3, restore_steps=2))
    cuts.on_rollback(1.0, 0.5, resume_step=0, rewarm_steps=0)
    seen = []
    for e in range(6):
        opt.step()
        sched.step()
        cuts.on_healthy()
        seen.append(round(_lr(opt) * (2 + e), 6))  # undo the schedule: the cut in force
    assert seen == [0.5, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", ["swalr", "cosine", "plateau"])
def test_a_cut_holds_under_schedulers_that_anneal_towards_a_rate_of_their_own(kind):
    # Prevents: SWALR annealing back to its uncut "swa_lr" (kept in the param groups) within a few
    # steps of a rollback, and a cosine's eta_min or ReduceLROnPlateau's min_lrs left uncut as the floor.
    model, opt = make(lr=1.0, opt="sgd")
    if kind == "swalr":
        sched = torch.optim.swa_utils.SWALR(opt, swa_lr=0.5, anneal_epochs=3)
    elif kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4, eta_min=0.5)
    else:
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=0, min_lr=0.5)
    cuts = LrCuts(opt, sched)
    cuts.on_rollback(1.0, 0.5, resume_step=0, rewarm_steps=0)
    for _ in range(4 if kind == "cosine" else 8):  # a cosine reaches eta_min at T_max
        opt.step()
        sched.step(1.0) if kind == "plateau" else sched.step()
    assert _lr(opt) == pytest.approx(0.25)  # the rate it anneals to (0.5), cut by half
