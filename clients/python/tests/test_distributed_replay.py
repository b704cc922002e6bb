"""Fault replay with 2 gloo ranks (DDP; FSDP2 on the device gate), on the device gate and on the host path: every rank replays
or none (the replay's backward runs DDP's all-reduce, so a rank replaying alone would hang or
desynchronise the collectives), the ranks agree on the class, and a TRANSIENT fault on one rank
loses no step on either."""
import os
import sys

import pytest
import torch

from models import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.torch2  # fused AdamW on the CPU (the device gate): torch >= 2.4

FLIP_STEP, POISON_STEP, STEPS = 7, 11, 14


def _worker(rank, world, port, target, out_dir, run, gate, faults, fn_ranks, mode):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp, wait_online, weights_finite
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp(mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = Guard(model, opt, run, target=target, device_gate=gate, deadline=5.0,
              policy={"known_good_healthy_steps": 2, "clip_mode": "OFF", "max_consecutive_skips": 3,
                      "validation_warmup_steps": 10**6})
    wait_online(g)
    state = {"armed": faults and rank == 1, "step": -1}

    def flip(mod, inp, out):  # one activation of rank 1 corrupted once: a transient fault
        if state["step"] == FLIP_STEP and state["armed"]:
            state["armed"] = False
            out = out.clone()
            out[0, 0] = float("nan")
        return out
    getattr(model, "module", model).blocks[0].register_forward_hook(flip)
    rec = {"gated": [], "weights": {}, "verdicts": []}
    for step in range(STEPS):
        state["step"] = step
        x, y = batch(step, seed=rank)
        if faults and rank == 1 and step == POISON_STEP:  # a bad sample on rank 1: deterministic
            y = y.clone(); y[0, 0] = float("nan")

        def fwd_bwd(x=x, y=y):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        loss = fwd_bwd()
        v = g.step(step, loss, replay=fwd_bwd if rank in fn_ranks else None)
        if step == FLIP_STEP + 1:  # the replay of FLIP_STEP ran inside this call
            rec["in_step"] = [(p.to_local() if hasattr(p, "to_local") else p).detach().clone()
                              for p in model.parameters()]
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"rank {rank}: non-finite weights after step {step}"
        rec["gated"].append(bool(v.device_gated))
        rec["verdicts"].append(v)
        rec["weights"][step] = [(p.to_local() if hasattr(p, "to_local") else p).detach().clone()
                                for p in model.parameters()]  # FSDP: this rank's shards
    g.close()
    rec["classes"] = {v.step: v.fault_class for v in rec.pop("verdicts") if v.fault_class}
    rec["recovery"] = dict(g.recovery.counters)
    rec["bad"] = sorted(g.recovery.bad_positions)
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def run(target, name, gate, faults=True, fn_ranks=(0, 1), mode="ddp"):
    return run_ranks(_worker, target, name, gate, faults, tuple(fn_ranks), mode)


@pytest.fixture(scope="module")
def clean(sidecar):
    return run(sidecar.target, "replay-clean", gate=False, faults=False)


@pytest.mark.parametrize("gate", [True, False], ids=["device-gate", "host-path"])
def test_two_ranks_replay_together_and_agree_on_the_class(sidecar, clean, gate):
    # prevents: one rank replaying alone (a mismatched all-reduce: hang) or the ranks disagreeing on the class
    r0, r1 = run(sidecar.target, f"replay-{'gate' if gate else 'host'}", gate=gate)
    if gate:
        assert r0["gated"][FLIP_STEP] and r0["gated"][POISON_STEP] and r0["gated"] == r1["gated"]
    for r in (r0, r1):
        assert r["classes"] == {FLIP_STEP: "TRANSIENT", POISON_STEP: "DETERMINISTIC"}, r["classes"]
        assert r["recovery"]["replays"] == 2 and r["recovery"]["transient"] == 1
        assert r["bad"] == [POISON_STEP]
    for step in range(STEPS):  # the ranks hold the same weights after every step
        assert all(torch.equal(a, b) for a, b in zip(r0["weights"][step], r1["weights"][step])), step
    # no step lost to the transient fault: up to the poisoned step the run equals a run without faults
    for a, b in zip(r0["weights"][POISON_STEP - 1], clean[0]["weights"][POISON_STEP - 1]):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    # the poisoned step was skipped on both ranks
    assert all(torch.equal(a, b) for a, b in zip(r0["weights"][POISON_STEP - 1], r0["weights"][POISON_STEP]))


def test_a_rank_without_replay_callable_means_no_rank_replays(sidecar):
    # prevents: the rank that can replay running a backward (an all-reduce) its peer never joins
    r0, r1 = run(sidecar.target, "replay-onefn", gate=True, fn_ranks=(1,))
    for r in (r0, r1):
        assert r["recovery"]["replays"] == 0 and r["classes"] == {}
    for step in (FLIP_STEP, POISON_STEP):  # both faulty steps skipped on both ranks, as without replay
        assert all(torch.equal(a, b) for a, b in zip(r0["weights"][step - 1], r0["weights"][step]))
        assert all(torch.equal(a, b) for a, b in zip(r0["weights"][step], r1["weights"][step]))


def test_fsdp_ranks_replay_together_on_the_device_gate(sidecar):
    # prevents: a sharded run's replayed update being gated on one rank's norm instead of the global one
    r0, r1 = run(sidecar.target, "replay-fsdp", gate=True, mode="fsdp")
    assert r0["gated"][FLIP_STEP] and r0["gated"] == r1["gated"]
    for r in (r0, r1):
        assert r["classes"] == {FLIP_STEP: "TRANSIENT", POISON_STEP: "DETERMINISTIC"}, r["classes"]
        assert r["recovery"]["replayed_updates"] == 1 and r["bad"] == [POISON_STEP]
        w = r["weights"]
        # FLIP_STEP was skipped on the device, then its replay's update applied inside the next guard.step()
        assert all(torch.equal(a, b) for a, b in zip(w[FLIP_STEP - 1], w[FLIP_STEP]))
        assert not all(torch.equal(a, b) for a, b in zip(w[FLIP_STEP], r["in_step"]))
        assert all(torch.equal(a, b) for a, b in zip(w[POISON_STEP - 1], w[POISON_STEP]))  # skipped
