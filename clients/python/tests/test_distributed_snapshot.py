"""In-memory snapshots of an FSDP2 model (``fully_shard``: DTensor parameters and optimizer state) on
2 gloo ranks: each rank snapshots its local shards and restores them in place, and a ROLLBACK to a
memory snapshot puts every rank's shards back to the snapshot's."""
import os
import sys
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.torch2  # fully_shard (FSDP2): torch >= 2.4


def _shards(model, opt=None):
    """This rank's local shards of the parameters (and of the optimizer's tensor state), copied."""
    loc = [p.detach().to_local().clone() for p in model.parameters()]
    if opt is not None:
        for p in model.parameters():
            for k, t in sorted(opt.state.get(p, {}).items()):
                if torch.is_tensor(t):
                    loc.append((t.to_local() if hasattr(t, "to_local") else t).detach().clone())
    return loc


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _worker(rank, world, port, target, out_dir):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp, wait_online, weights_finite
    from trainguard import Action
    from trainguard.guard import Guard
    from trainguard.snapshot import SnapshotPolicy, SnapshotStore
    join_gloo(rank, world, port)
    out = {}

    def fsdp_model():
        m = parallel_mlp("fsdp")
        return m, torch.optim.AdamW(m.parameters(), lr=1e-2)

    def train(m, o, steps):
        for step in steps:
            x, y = batch(step, seed=rank)
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
            o.zero_grad(set_to_none=True)

    # 1. the store alone: take, train on, restore -> this rank's shards and optimizer state as taken
    model, opt = fsdp_model()
    train(model, opt, range(3))
    store = SnapshotStore(model, opt, policy=SnapshotPolicy())
    s = store.take(0, 2, 3)
    taken = _shards(model, opt)
    train(model, opt, range(3, 6))
    out["moved"] = not _equal(_shards(model, opt), taken)
    store.restore(s)
    out["restored_equal"] = _equal(_shards(model, opt), taken)
    out["dtensor_state"] = all(type(t).__name__ == "DTensor" for st in opt.state.values()
                               for k, t in st.items() if k != "step")
    train(model, opt, range(6, 8))  # the optimizer runs on the restored (DTensor) state
    out["finite_after"] = weights_finite(model)

    # 2. through the Guard: a NaN on rank 1 -> ROLLBACK to a memory snapshot on both ranks
    model, opt = fsdp_model()
    g = Guard(model, opt, "fsdp-snapshots", target=target, deadline=5.0, mode="sync", snapshots={"interval": 2, "max_overhead": 0},
              policy={"known_good_healthy_steps": 2, "clip_mode": "OFF", "max_consecutive_skips": 0,
                      "validation_warmup_steps": 10**6, "rollback_rewarm_steps": 0})
    wait_online(g)
    after = {-1: _shards(model)}
    poisoned, step, out["rollbacks"] = False, 0, []
    while step < 12:
        x, y = batch(step, seed=rank)
        if rank == 1 and step == 8 and not poisoned:
            poisoned = True
            y = y.clone(); y[0, 0] = float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        v = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"rank {rank}: non-finite weights after step {step}"
        if v.action == Action.ROLLBACK:
            c = v.rollback.checkpoint_step
            out["rollbacks"].append((step, c, v.rollback.files[0].split("/rank")[0].startswith("memory://"),
                                     _equal(_shards(model), after[c])))
            step = v.resume_step
            continue
        after[step] = _shards(model)
        step += 1
    out["snapshot_restores"] = g.recovery.counters["snapshot_restores"]
    g.close()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_fsdp2_snapshot_restores_each_ranks_shards_and_a_rollback_uses_it(sidecar):
    # prevents: FSDP2 runs without in-memory snapshots (or a restore mixing DTensor and plain state)
    from trainguard.testing import free_port
    d = tempfile.mkdtemp()
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, sidecar.target, d)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    for r in range(2):
        out = torch.load(os.path.join(d, f"rank{r}.pt"))
        assert out["moved"] and out["restored_equal"] and out["dtensor_state"] and out["finite_after"], (r, out)
        assert len(out["rollbacks"]) == 1, out["rollbacks"]
        step, target, memory, equal = out["rollbacks"][0]
        assert step == 8 and 0 <= target < 8 and memory and equal, out["rollbacks"]
        assert out["snapshot_restores"] == 1
