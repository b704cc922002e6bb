"""Recovery end to end: real training loops against the real sidecar jar -- rollback to an
in-memory snapshot from step 1, LR cuts from the base over repeated rollbacks, fault replay
classes (the pieces alone are tested in test_recovery_units.py)."""
import types

import pytest
import torch

from trainguard import Action
from trainguard.guard import Guard
from models import FlipOnce, batch, make, weights_finite


QUICK = {"known_good_healthy_steps": 2, "validation_warmup_steps": 10**6, "clip_mode": "OFF",
         "max_consecutive_skips": 3, "rollback_rewarm_steps": 2, "max_rollbacks": 3}


def _fp16_loss(out, y):
    # the loss in float16: a diverging model overflows it to inf (as mixed-precision runs do)
    return ((out.half() - y.half()) ** 2).mean()


class LrRecorder:
    """Wraps optimizer.step to record the LR each update really ran at (re-warm included)."""

    def __init__(self, opt):
        self.lrs = {}
        self.step = None
        inner = opt.step

        def step(o, *a, **k):
            self.lrs[self.step] = o.param_groups[0]["lr"]
            return inner(*a, **k)
        opt.step = types.MethodType(step, opt)  # bound: LR schedulers wrap optimizer.step


def run_loop(g, model, opt, steps, loss_fn=None, inject=None, rec=None, eval_every=None, replay=True):
    """The guarded loop of the README, with a replay callable; returns verdicts in order."""
    loss_fn = loss_fn or torch.nn.functional.mse_loss
    out, step = [], 0
    while step < steps:
        if g.is_bad_batch(step):  # the data-loader contract: a batch that failed DETERMINISTICALLY is skipped
            step += 1
            continue
        x, y = batch(step)
        if inject is not None:
            x, y = inject(step, x, y)

        def fwd_bwd(x=x, y=y):
            loss = loss_fn(model(x), y)
            loss.backward()
            return loss
        loss = fwd_bwd()
        if rec is not None:
            rec.step = step
        v = g.step(step, loss, replay=fwd_bwd if replay else None)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"non-finite weights after step {step} ({v.action.name})"
        out.append(v)
        step = v.resume_step if v.resume_step is not None else step + 1
    return out


def eval_loss(model):
    with torch.no_grad():
        x, y = batch(10**6)
        return float(torch.nn.functional.mse_loss(model(x), y))


def expected_lrs(verdicts, base):
    """The LR every applied update must run at: base x lr_factor of the attempt (never compounded),
    re-warmed linearly over the plan's rewarm_steps from the resume step."""
    lrs, scale, rewarm, step = {}, 1.0, None, 0
    for v in verdicts:
        if v.action == Action.ROLLBACK:
            scale = v.rollback.lr_factor
            rewarm = (v.rollback.checkpoint_step + 1, v.rollback.rewarm_steps)
        elif v.should_step:
            f = 1.0
            if rewarm is not None and 0 <= v.step - rewarm[0] < rewarm[1]:
                f = (v.step - rewarm[0] + 1) / rewarm[1]
            lrs.setdefault(v.step, []).append(base * scale * f)
    return lrs


def test_divergence_at_step_2_recovers_from_memory_snapshot_with_lr_cut_from_base(sidecar):
    # prevents: the HALT at step 5 of a run that diverged at step 2 (no checkpoint could be known-good
    # yet), and LR cuts compounding over repeated rollbacks (20 -> 10 -> 2.5)
    run, factor = "diverge", 0.1
    model, opt = make(opt="sgd", lr=50.0)   # 50: inf at step 2; 5: inf a few steps later; 0.5 trains
    rec = LrRecorder(opt)
    g = Guard(model, opt, run, target=sidecar.target, deadline=5.0, mode="sync",
              policy=dict(QUICK, rollback_lr_factor=factor), snapshots={"interval": 1, "max_overhead": 0})
    vs = run_loop(g, model, opt, 60, loss_fn=_fp16_loss, rec=rec)
    g.close()
    rb = [v for v in vs if v.action == Action.ROLLBACK]
    assert len(rb) == 2, [(v.step, v.action.name) for v in vs]
    assert all(v.rollback.files[0].startswith("memory://") for v in rb)
    assert [v.rollback.lr_factor for v in rb] == pytest.approx([0.1, 0.01])
    assert rb[0].step <= 6 and rb[0].rollback.checkpoint_step == -1  # the state the run started from
    check_lrs(rec, vs, 50.0)
    # ... and it ends where a healthy run at the final rate ends (same init, same data): bound 1.25x
    ref_model, ref_opt = make(opt="sgd", lr=50.0 * factor ** 2)
    ref = Guard(ref_model, ref_opt, run + "-ref", target=sidecar.target, deadline=5.0, policy=QUICK, snapshots=False)
    run_loop(ref, ref_model, ref_opt, 60)
    ref.close()
    got, healthy = eval_loss(model), eval_loss(ref_model)
    assert got <= 1.25 * healthy, (got, healthy)
    kinds = [i["kind"] for i in sidecar.run_info(run)["incidents"]]
    assert "ROLLBACK" in kinds and "HALT" not in kinds


def check_lrs(rec, verdicts, base):
    want = expected_lrs(verdicts, base)
    assert set(rec.lrs) == set(want), (sorted(rec.lrs), sorted(want))
    for step, lr in rec.lrs.items():
        assert lr == pytest.approx(want[step][-1]), f"step {step}: lr {lr}, want {want[step]}"


@pytest.mark.parametrize("rollbacks", [2, 3])
def test_lr_of_every_step_across_repeated_rollbacks(sidecar, rollbacks):
    # prevents: a cut applied on an already-cut rate, a re-warm that does not end at the cut rate,
    # or a scheduler that undoes the cut
    run = f"lr-steps-{rollbacks}"
    model, opt = make(lr=1e-2)
    rec = LrRecorder(opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)  # a schedule that must keep the cut
    g = Guard(model, opt, run, target=sidecar.target, deadline=5.0, mode="sync", scheduler=sched,
              policy=dict(QUICK, rollback_lr_factor=0.5, rollback_rewarm_steps=3), snapshots={"interval": 2, "max_overhead": 0})
    windows = [range(8 * k, 8 * k + 4) for k in range(1, rollbacks + 1)]
    seen = set()

    def poison(step, x, y):
        if any(step in w for w in windows) and step not in seen:
            seen.add(step)
            y = torch.full_like(y, float("nan"))
        return x, y
    vs = run_loop(g, model, opt, 8 * rollbacks + 12, inject=poison, rec=rec)
    g.close()
    rb = [v for v in vs if v.action == Action.ROLLBACK]
    assert [v.rollback.lr_factor for v in rb] == pytest.approx([0.5 ** k for k in range(1, rollbacks + 1)])
    check_lrs(rec, vs, 1e-2)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** rollbacks)  # kept (the default)


def test_poisoned_batch_is_deterministic_and_its_position_skipped_on_rollback(sidecar):
    # prevents: a bad batch being mistaken for a hardware fault, and being fed again after a rollback
    model, opt = make()
    g = Guard(model, opt, "poison", target=sidecar.target, deadline=5.0, mode="sync",
              policy=dict(QUICK, max_consecutive_skips=0), snapshots={"interval": 2, "max_overhead": 0})

    def poison(step, x, y):
        if step == 9:
            y = y.clone()
            y[0, 0] = float("nan")
        return x, y
    vs = run_loop(g, model, opt, 16, inject=poison)
    g.close()
    v9 = [v for v in vs if v.step == 9]
    assert len(v9) == 1 and v9[0].fault_class == "DETERMINISTIC" and v9[0].action == Action.ROLLBACK
    assert v9[0].rollback.bad_positions == [9] and g.is_bad_batch(9) and not g.is_bad_batch(8)
    after = [v.step for v in vs[vs.index(v9[0]) + 1:]]
    assert after[0] == v9[0].resume_step and 9 not in after and after[-1] == 15
    assert all(v.should_step for v in vs[vs.index(v9[0]) + 1:])
    assert g.recovery.counters["deterministic"] == 1
    msgs = [i["message"] for i in sidecar.run_info("poison")["incidents"] if i["kind"] == "FAULT_REPLAYED"]
    assert any("DETERMINISTIC" in m and "data position 9" in m for m in msgs), msgs


def test_activation_corrupted_once_is_transient_replayed_and_no_step_lost(sidecar):
    # prevents: losing a step (and counting a skip) for a one-off bit flip a replay would have fixed
    model, opt = make()
    ref_model, ref_opt = make()
    g = Guard(model, opt, "transient", target=sidecar.target, deadline=5.0, policy=QUICK)
    mark = FlipOnce(model.blocks[0], step=7).mark  # a one-off NaN in one activation at step 7
    vs = run_loop(g, model, opt, 15, inject=mark)
    g.close()
    v7 = [v for v in vs if v.step == 7][0]
    assert v7.fault_class == "TRANSIENT" and v7.should_step
    assert [v.step for v in vs] == list(range(15)) and all(v.should_step for v in vs)
    assert g.counters["skips"] == 0
    # no step lost: the weights equal a run that never saw the flip
    run_loop_plain(ref_model, ref_opt, 15)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()))
    incidents = sidecar.run_info("transient")["incidents"]
    assert any(i["kind"] == "FAULT_REPLAYED" and i["message"].startswith("TRANSIENT") for i in incidents), incidents
    assert not any(i["kind"].startswith("NON_FINITE") for i in incidents)


def run_loop_plain(model, opt, steps):
    for step in range(steps):
        x, y = batch(step)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_fault_that_changes_between_runs_is_unstable(sidecar):
    # prevents: calling numerics that differ from pass to pass deterministic (or transient)
    model, opt = make()
    g = Guard(model, opt, "unstable", target=sidecar.target, deadline=5.0, policy=QUICK)
    state = {"step": -1, "calls": 0}

    def wobble(mod, inp, out):
        if state["step"] == 5:
            state["calls"] += 1
            out = out.clone()
            out[0, 0] = float("nan")
            if state["calls"] == 2:  # the replay: the NaN shows up one layer later this time
                out = out.nan_to_num()
        return out

    def late(mod, inp, out):
        if state["step"] == 5 and state["calls"] == 2:
            out = out.clone()
            out[0, 0] = float("nan")
        return out
    model.blocks[0].register_forward_hook(wobble)
    model.blocks[1].register_forward_hook(late)

    def mark(step, x, y):
        state["step"] = step
        return x, y
    vs = run_loop(g, model, opt, 8, inject=mark)
    g.close()
    v5 = [v for v in vs if v.step == 5][0]
    assert v5.fault_class == "UNSTABLE" and v5.action == Action.SKIP
    assert g.recovery.counters["unstable"] == 1


def test_replay_budget_is_respected(sidecar):
    # prevents: a run of bad batches doubling the cost of every step with replays
    model, opt = make()
    g = Guard(model, opt, "budget", target=sidecar.target, deadline=5.0,
              policy=dict(QUICK, max_consecutive_skips=100), replay={"max_replays": 2, "window_steps": 10})
    calls = []

    def poison(step, x, y):
        if step in (3, 4, 5, 6, 14):
            y = y.clone()
            y[0, 0] = float("nan")
        return x, y
    orig = g.recovery.budget.spend
    g.recovery.budget.spend = lambda step: (calls.append(step), orig(step))
    vs = run_loop(g, model, opt, 16, inject=poison)
    g.close()
    assert calls == [3, 4, 14]
    assert [v.fault_class for v in vs if v.step in (3, 4, 5, 6, 14)] == ["DETERMINISTIC", "DETERMINISTIC", None, None,
                                                                          "DETERMINISTIC"]


def test_no_replay_callable_means_no_replay_and_old_behaviour(sidecar):
    # prevents: a loop that cannot re-yield its batch getting a changed verdict or an exception
    model, opt = make()
    g = Guard(model, opt, "noreplay", target=sidecar.target, deadline=5.0, policy=dict(QUICK, max_consecutive_skips=10))

    def poison(step, x, y):
        return (x, torch.full_like(y, float("nan"))) if step == 4 else (x, y)
    vs = run_loop(g, model, opt, 7, inject=poison, replay=False)
    g.close()
    v4 = [v for v in vs if v.step == 4][0]
    assert v4.action == Action.SKIP and v4.fault_class is None
    assert g.recovery.counters["replay_unavailable"] == 1 and g.recovery.counters["replays"] == 0


def test_memory_snapshots_registered_as_memory_checkpoints_and_evicted_per_slot(sidecar):
    # prevents: the sidecar choosing a snapshot the trainer has already overwritten
    model, opt = make()
    g = Guard(model, opt, "slots", target=sidecar.target, deadline=5.0, mode="sync", policy=QUICK,
              snapshots={"interval": 1, "max_overhead": 0})
    run_loop(g, model, opt, 20)
    g.close()
    cks = [c for c in sidecar.run_info("slots")["checkpoints"] if c["format"] == "MEMORY"]
    good = [c for c in cks if c["state"] == "KNOWN_GOOD"]
    assert len(cks) >= 4 and 1 <= len(good) <= 2
    assert all(c["state"] in ("KNOWN_GOOD", "EVICTED", "VERIFIED") for c in cks), cks
    held = {s.step for s in g.recovery.store.slots if s.state != "EMPTY"}
    assert {c["step"] for c in good} <= held
