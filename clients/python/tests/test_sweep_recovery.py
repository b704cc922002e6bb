"""Regressions found by the sweeps around rollbacks and checkpoints, against the real sidecar:
snapshots and optimizer parameter groups, parameters outside the model, checkpoints damaged or
refused after registration, the step a resumed loop continues from."""
import os
import time

import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from models import batch, make, weights_finite

def test_a_rollback_to_a_snapshot_from_before_add_param_group_halts_cleanly_without_touching_the_weights(sidecar):
    # prevents: a ValueError out of guard.step() after the weights were already overwritten (half restored)
    import pytest
    from trainguard import TrainingHalted
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    m[0].requires_grad_(False)  # the backbone frozen at first
    opt = torch.optim.AdamW([{"params": m[2].parameters(), "lr": 1e-2}])
    g = Guard(m, opt, "add-param-group-rollback", target=sidecar.target, deadline=5.0, replay=False)
    wopt = g.wrap(opt)
    with pytest.raises(TrainingHalted) as halted:
        for step in range(30):
            if step == 10:  # unfrozen: a new parameter group
                m[0].requires_grad_(True)
                wopt.add_param_group({"params": m[0].parameters(), "lr": 1e-3})
            x, y = batch(step)
            loss = torch.nn.functional.mse_loss(m(x[:, :4]), y)
            loss = loss * float("nan") if 15 <= step < 19 else loss  # the 4th skip (limit 3) is a ROLLBACK
            loss.backward()
            before = [p.detach().clone() for p in m.parameters()]
            g.step(step, loss)
            wopt.step()
            wopt.zero_grad()
    assert "add_param_group" in str(halted.value), halted.value
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))  # nothing half-restored
    assert len(opt.param_groups) == 2
    g.close()


def test_a_rollback_restores_a_parameter_the_optimizer_updates_outside_the_model(sidecar):
    # prevents: learned loss weights passed to the optimizer beside model.parameters() keeping their
    # later values after a rollback while their optimizer state went back (an inconsistent state)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    log_vars = torch.nn.Parameter(torch.zeros(2))  # outside the model
    opt = torch.optim.Adam(list(model.parameters()) + [log_vars], lr=1e-2)
    g = Guard(model, opt, "outside-param", target=sidecar.target, deadline=5.0, replay=False,
              policy={"known_good_healthy_steps": 5}, snapshots={"interval": 10, "max_overhead": 0})
    after, restored = {}, None
    for step in range(60):
        x, y = torch.randn(16, 4), torch.randn(16, 2)
        loss = (torch.exp(-log_vars) * ((model(x) - y) ** 2).mean(0) + log_vars).sum()
        loss = loss * float("nan") if 40 <= step < 44 else loss
        loss.backward()
        v = g.step(step, loss)
        if v.action == Action.ROLLBACK:
            restored = v.rollback.checkpoint_step
            break
        g.optimizer_step()
        opt.zero_grad()
        after[step] = (log_vars.detach().clone(), opt.state[log_vars]["exp_avg"].clone())
    g.close()
    assert restored is not None and restored >= 0, restored
    assert torch.equal(log_vars.detach(), after[restored][0]) and torch.equal(opt.state[log_vars]["exp_avg"], after[restored][1])


@pytest.mark.parametrize("damage", ["nan", "truncate", "trainer_truncate", "delete"])
def test_a_checkpoint_damaged_after_it_was_verified_halts_the_rollback_with_its_reason(sidecar, damage):
    # prevents: a rollback loading NaN weights from a file rewritten since the sidecar verified it, and a
    # truncated file's SafetensorError/OSError escaping guard.step() with the model half-restored
    from trainguard import TrainingHalted
    from trainguard.safetensors_io import read_safetensors, write_safetensors
    model, opt = make()
    g = Guard(model, opt, f"damaged-{damage}", target=sidecar.target, deadline=5.0, snapshots=False, replay=False,
              policy={"known_good_healthy_steps": 3, "max_consecutive_skips": 2})
    root = os.path.join(sidecar.checkpoint_root, f"damaged-{damage}")
    with pytest.raises(TrainingHalted) as halted:
        for step in range(30):
            x, y = batch(step)
            if 14 <= step:
                y = torch.full_like(y, float("nan"))
            torch.nn.functional.mse_loss(model(x), y).backward()
            g.step(step, None)
            g.optimizer_step()
            opt.zero_grad()
            if step == 4:
                g.save_checkpoint(root, 4, data_position=5)
            if step == 12:  # known-good (waited for), then damaged on disk
                g.flush()
                for _ in range(300):
                    if (4, "KNOWN_GOOD") in [(c["step"], c["state"]) for c in sidecar.run_info(g.run)["checkpoints"]]:
                        break
                    time.sleep(0.1)
                d = os.path.join(root, "step-00000004")
                st, tp = os.path.join(d, "model.safetensors"), os.path.join(d, "trainer.pt")
                if damage == "delete":
                    os.remove(st)
                elif damage == "nan":
                    w = read_safetensors(st)
                    w["inp.weight"][0, 0] = float("nan")
                    write_safetensors(w, st)
                else:
                    p = st if damage == "truncate" else tp
                    with open(p, "r+b") as f:
                        f.truncate(os.path.getsize(p) // 2)
            assert weights_finite(model), f"non-finite weights after step {step}"
    why = str(halted.value)
    assert "ROLLBACK to the checkpoint of step 4 ordered but" in why, why
    # the files' size and time, recorded at registration, tell before anything is read (integrity.py)
    assert {"nan": "since it was registered", "delete": "is gone, deleted since it was registered"}.get(
        damage, "changed since it was registered") in why, why
    assert "No older known-good checkpoint" in why, why  # the sidecar halted the run: it is on the record
    assert sidecar.run_info(g.run)["run"]["state"] == "HALTED"
    assert weights_finite(model)
    g.close()


def test_a_checkpoint_the_sidecar_refuses_raises_a_trainguard_error_and_keeps_the_steps_entry(sidecar, tmp_path):
    # prevents: a raw grpc error out of checkpoint_saved for a path outside trainguard.checkpoint.roots,
    # and the refused path replacing the registered checkpoint of that step
    from trainguard.errors import TrainguardError
    from trainguard.safetensors_io import write_safetensors
    model, opt = make()
    g = Guard(model, opt, "refused-checkpoint", target=sidecar.target, deadline=5.0)
    good, bad = os.path.join(sidecar.checkpoint_root, "good.safetensors"), str(tmp_path / "outside.safetensors")
    for path in (good, bad):
        write_safetensors(model.state_dict(), path)
    g.checkpoint_saved(good, 3)
    try:
        g.checkpoint_saved(bad, 3)
        raise AssertionError("a path outside the roots was accepted")
    except TrainguardError as e:
        assert "RegisterCheckpoint step 3" in str(e), e
    assert g.checkpoints[3]["dir"] == good and g.checkpoints[3]["checkpoint_id"]
    g.close()


def test_save_checkpoint_after_a_renumbering_rollback_records_the_loops_step_to_resume_from(sidecar):
    # prevents: trainer.pt holding the guard's step while the restored guard state renumbers again: a
    # resumed loop that continues from side["step"] + 1 was shifted twice, behind its own checkpoint
    model, opt = make()
    g = Guard(model, opt, "save-after-renumbering", target=sidecar.target, deadline=5.0, replay=False,
              policy={"max_consecutive_skips": 2})
    wopt = g.wrap(opt)
    for step in range(30):  # a loop that keeps counting after the rollback its NaN burst causes
        x, y = batch(step)
        y = torch.full_like(y, float("nan")) if 10 <= step < 13 else y
        torch.nn.functional.mse_loss(model(x), y).backward()
        g.step(step, None)
        wopt.step()
        wopt.zero_grad()
    shift = 29 - g.last_step
    assert g.counters["rollbacks"] == 1 and shift > 0, (g.counters, g.last_step)
    root = os.path.join(sidecar.checkpoint_root, "save-after-renumbering")
    g.save_checkpoint(root, 29)
    side = torch.load(os.path.join(root, f"step-{29 - shift:08d}", "trainer.pt"), weights_only=False)
    assert side["step"] == 29 and side["guard_step"] == 29 - shift
    g.close()


def test_after_add_param_group_a_snapshot_is_taken_at_once_so_a_later_burst_rolls_back_instead_of_halting(sidecar):
    # prevents: no snapshot for the interval (and the pace) after a backbone was unfrozen, every snapshot held
    # unrestorable into the new groups: a burst 20 steps later halted the run
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    m[0].requires_grad_(False)
    opt = torch.optim.AdamW([{"params": m[2].parameters(), "lr": 1e-2}])
    g = Guard(m, opt, f"add-param-group-snapshot-{time.time_ns()}", target=sidecar.target, deadline=5.0,
              replay=False, mode="sync", policy={"known_good_healthy_steps": 5},
              snapshots={"interval": 1000, "max_overhead": 0})  # by the interval alone: none in this run
    wopt = g.wrap(opt)
    target = None
    for step in range(40):
        if step == 10:
            m[0].requires_grad_(True)
            wopt.add_param_group({"params": m[0].parameters(), "lr": 1e-3})
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(m(x[:, :4]), y)
        loss = loss * float("nan") if 30 <= step < 34 else loss
        loss.backward()
        v = g.step(step, loss)
        wopt.step()
        wopt.zero_grad()
        if v.action == Action.ROLLBACK:
            target = v.rollback.checkpoint_step
            break
    g.close()
    assert target is not None and target >= 10, target  # a snapshot of the new groups, taken right after the change
    assert len(opt.param_groups) == 2 and all(torch.isfinite(p).all() for p in m.parameters())
