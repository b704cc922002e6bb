"""One sidecar per node (k8s/overlays/multi-node): 2 gloo ranks, each talking to a sidecar of its own.
Each sidecar must hold rollback targets, or the one whose rank judges a burst halts the whole job."""
import os
import sys
import time

import pytest
import torch

from models import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def second_sidecar(tmp_path_factory):
    from sidecar_fixture import start_sidecar
    sc = start_sidecar(tmp_path_factory, "per-node-b")
    yield sc
    sc.stop()


def _per_node_worker(rank, world, port, targets, out_dir, run, fused):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp, weights_finite, weights_hash
    import trainguard
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, **({"fused": True} if fused else {}))  # torch 1.13: no fused
    g = Guard(model, opt, run, target=targets[rank], deadline=5.0, replay=False, device_gate=fused,
              policy={"known_good_healthy_steps": 5}, snapshots={"interval": 5, "max_overhead": 0})
    wopt = g.wrap(opt)
    rec = {"events": [], "error": None}
    try:
        for step in range(40):
            x, y = batch(step, seed=rank)
            if rank == 1 and 30 <= step <= 36:  # a burst only rank 1 (sidecar B's rank) sees
                x = x.clone(); x[0, 0] = float("nan")
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            v = g.step(step, loss)
            if v.action.name in ("ROLLBACK", "HALT"):
                rec["events"].append((step, v.action.name))
            wopt.step()
            wopt.zero_grad()
            assert weights_finite(model)
    except trainguard.TrainingHalted as e:
        rec["error"] = str(e)
    rec["hash"] = weights_hash(model.module)
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.torch2)], ids=["host", "gate"])
def test_with_a_sidecar_per_node_a_burst_on_one_rank_rolls_back_on_both_instead_of_halting(sidecar, second_sidecar,
                                                                                            fused):
    # prevents: rank 0 alone registering the ranks' snapshots, with its own sidecar: the other node's sidecar had
    # no target, halted on the burst its rank judged, and the whole job stopped
    run = f"per-node-{fused}-{time.time_ns()}"
    r0, r1 = run_ranks(_per_node_worker, [sidecar.target, second_sidecar.target], run, fused, timeout=150)
    for r in (r0, r1):
        assert r["error"] is None, r
        assert any(a == "ROLLBACK" for _, a in r["events"]), r
    assert r0["hash"] == r1["hash"]
    for sc in (sidecar, second_sidecar):  # each sidecar held known-good snapshots of its own
        states = [c["state"] for c in sc.run_info(run).get("checkpoints", [])]
        assert "KNOWN_GOOD" in states or "EVICTED" in states, states
        assert sc.run_info(run)["run"]["state"] != "HALTED"
