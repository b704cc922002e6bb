"""A GradScaler on the device gate with 2 gloo ranks (DDP and FSDP2): an overflow that only one rank
sees (an Inf in its own gradient or shard, as a too-high fp16 scale gives one shard under FSDP) must
skip the update on every rank and lower every rank's scale alike. Under DDP a GradScaler alone
decides per rank; the gate's agreed flag, ORed into each rank's found-inf record, makes the ranks
decide together (the DDP case fails without that OR). Under FSDP2, torch's DTensor dispatch already
reduces the found-inf record across ranks (a max), and the gate's OR agrees with it."""
import os
import sys

import pytest
import torch

from models import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.torch2  # fused AdamW and GradScaler on the CPU

OVERFLOW_STEP = 6


def _worker(rank, world, port, target, out_dir, mode):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp, wait_online, weights_finite
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp(mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = Guard(model, opt, f"dist-scaler-{mode}", target=target, scaler=scaler, device_gate=True, deadline=5.0)
    wait_online(g)
    rec = {"skipped": [], "scales": [], "gated": [], "local": []}
    for step in range(12):
        x, y = batch(step, seed=rank)
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        if rank == 1 and step == OVERFLOW_STEP:  # this rank's gradient (its shard under FSDP) overflowed
            with torch.no_grad():
                p = next(model.parameters())  # inp.weight: both ranks hold rows of it under FSDP
                (p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad).mul_(float("inf"))
        before = [p.detach().clone() for p in model.parameters()]
        v = g.step(step, loss)
        g.optimizer_step()  # scaler.step + scaler.update through the guard
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"rank {rank}: non-finite weights after step {step}"
        rec["gated"].append(bool(v.device_gated))
        rec["scales"].append(scaler.get_scale())
        if all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters())):
            rec["skipped"].append(step)
        # the weights each rank holds (its shards under FSDP): equal across ranks under DDP
        rec["local"].append([(p.to_local() if hasattr(p, "to_local") else p).detach().clone() for p in model.parameters()])
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_an_overflow_on_one_rank_skips_and_lowers_the_scale_on_every_rank(sidecar, mode):
    # prevents: under a GradScaler, one rank skipping an overflowed update (and halving its scale)
    # while the other applies it, so the ranks' weights and scales part for good
    r0, r1 = run_ranks(_worker, sidecar.target, mode)
    assert r0["skipped"] == r1["skipped"] == [OVERFLOW_STEP], (r0["skipped"], r1["skipped"])
    assert r0["scales"] == r1["scales"]  # the same scale on both ranks after every step
    assert r0["scales"][OVERFLOW_STEP] == r0["scales"][OVERFLOW_STEP - 1] / 2  # lowered once, for the overflow
    assert sum(r0["gated"]) >= 10 and r0["gated"] == r1["gated"]
    if mode == "ddp":
        for step, (a, b) in enumerate(zip(r0["local"], r1["local"])):
            assert all(torch.equal(x, y) for x, y in zip(a, b)), f"the ranks' weights differ after step {step}"
