"""2 gloo ranks on the device gate (fused AdamW on the CPU honours found_inf/grad_scale like CUDA):
the ranks agree in one in-stream all_reduce, a NaN on one rank skips the step on both, and the
weights stay identical across ranks."""
import os
import sys
import tempfile

import pytest
import torch

from models import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.torch2  # fused AdamW on the CPU: torch >= 2.4


def _worker(rank, world, port, target, out_dir, mode, nan_rank, nan_step, corrupt_step):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp, weights_finite, weights_hash
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp(mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0 / (1 + k))  # a new LR every step
    g = Guard(model, opt, f"gate-{mode}-{nan_step}-{corrupt_step}", target=target, device_gate=True, deadline=5.0,
              policy={"known_good_healthy_steps": 5}, scheduler=sched)
    rec = {"gated": [], "hash": [], "skipped": []}
    for step in range(16):
        x, y = batch(step, seed=rank)
        if rank == nan_rank and step == nan_step:
            y = y.clone(); y[0, 0] = float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if rank == 1 and step == corrupt_step:  # one rank's gradients silently differ after the all-reduce
            with torch.no_grad():
                p = next(model.parameters())
                (p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad).mul_(1.5)
        before = [p.detach().clone() for p in model.parameters()]
        v = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"rank {rank}: non-finite weights after step {step}"
        rec["gated"].append(bool(v.device_gated))
        rec.setdefault("lr", []).append(opt.param_groups[0]["lr"])
        if all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters())):
            rec["skipped"].append(step)
        full = model.module if hasattr(model, "module") else model
        if mode == "fsdp":
            rec["hash"].append(None)
        else:
            rec["hash"].append(weights_hash(full))
    g.close()
    rec["counters"] = dict(g.counters)
    rec["scheduler_steps"] = sched.last_epoch
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def run(target, mode="ddp", nan_rank=1, nan_step=7, corrupt_step=-1):
    return run_ranks(_worker, target, mode, nan_rank, nan_step, corrupt_step)


def test_nan_on_one_rank_skips_on_both_on_the_device_gate(sidecar):
    # prevents: ranks applying different updates (one skipped, one applied) when only one saw a NaN
    r0, r1 = run(sidecar.target)
    assert r0["hash"] == r1["hash"]  # weights identical on both ranks after every step
    assert 7 in r0["skipped"] and 7 in r1["skipped"]
    assert sum(r0["gated"]) >= 10 and r0["gated"] == r1["gated"]
    assert r0["counters"]["device_gated_steps"] >= 10
    # the schedule advanced on the skip the device made, and was held back once when the ranks
    # learned of it, at the same step on both (their LRs never differ)
    assert r0["scheduler_steps"] == r1["scheduler_steps"] == 15 and r0["lr"] == r1["lr"]


def test_grad_norm_mismatch_across_ranks_skips_the_step_on_both(sidecar):
    # prevents: silent data corruption on one rank (its gradients differ after DDP's all-reduce) going unnoticed
    r0, r1 = run(sidecar.target, nan_rank=-1, corrupt_step=9)
    assert r0["counters"]["grad_norm_mismatches"] == 1 and r1["counters"]["grad_norm_mismatches"] == 1
    assert 9 in r0["skipped"] and 9 in r1["skipped"]
    assert r0["hash"] == r1["hash"]
    assert r0["scheduler_steps"] == r1["scheduler_steps"] == 15 and r0["lr"] == r1["lr"]
    # both ranks' own values were finite: each said the ranks skipped together, and the sidecar's
    # records say SKIP for both (a SKIP is committed before its verdict is answered)
    for rank in (0, 1):
        steps = sidecar.get(f"/api/runs/gate-ddp-7-9/steps?rank={rank}&from=9&to=9")["steps"]
        assert [b["skips"] for b in steps["buckets"]] == [1], (rank, steps)


def test_fsdp_nan_on_one_rank_skips_on_both(sidecar):
    # prevents: a sharded run (FSDP) updating the shards of one rank while the other skipped
    r0, r1 = run(sidecar.target, mode="fsdp")
    assert 7 in r0["skipped"] and 7 in r1["skipped"]
    assert sum(r0["gated"]) >= 10 and r0["gated"] == r1["gated"]


def test_sidecar_unreachable_ranks_still_gate_and_agree():
    # prevents: "no transition offline -> gated" crashing every rank of a multi-GPU run whose sidecar is down
    # a socket path nothing listens on: a free TCP port could be handed out again before the run
    # (even to the ranks' own rendezvous store)
    r0, r1 = run("unix://" + os.path.join(tempfile.mkdtemp(), "no-sidecar.sock"))
    assert 7 in r0["skipped"] and 7 in r1["skipped"]
    assert r0["hash"] == r1["hash"]
