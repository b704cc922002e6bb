"""Regressions found by the distributed sweep (2 gloo ranks on the CPU, the real sidecar): FSDP2 on
the host path clips and reports by the global norm; a rank other than 0 records a checkpoint rank 0
has not written (or cannot share) without looking for it; save_checkpoint refuses sharded
parameters on every rank instead of failing on rank 0 while the others wait; a torch.compile'd DDP
model is replicated, not sharded."""
import os
import sys
import time

import pytest
import torch

from models import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.torch2  # FSDP2 (fully_shard), torch.compile: torch >= 2.4
THRESHOLD = 0.05


def shard_norm(model):
    local = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in local])))


def _fsdp_host_worker(rank, world, port, target, out_dir):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    import torch.distributed as dist
    from models import batch, join_gloo, leave_gloo, parallel_mlp
    from trainguard.errors import TrainguardError
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("fsdp")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # foreach: the host path
    g = Guard(model, opt, "fsdp-host-clip", target=target, deadline=5.0, snapshots=False,
              policy={"clip_mode": "FIXED", "clip_threshold": THRESHOLD})
    rec = {"clipped_global": [], "actions": []}
    for step in range(6):
        x, y = batch(step, seed=rank)
        torch.nn.functional.mse_loss(model(x), y).backward()
        v = g.step(step, None)
        sq = torch.tensor([shard_norm(model) ** 2])
        dist.all_reduce(sq)
        rec["clipped_global"].append(float(sq.sqrt()))
        rec["actions"].append(v.action.name)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    try:  # every rank refuses, none waits at the barrier for a rank that failed
        g.save_checkpoint(out_dir, 6)
        rec["save"] = "saved"
    except TrainguardError as e:
        rec["save"] = str(e)
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_fsdp2_on_the_host_path_clips_by_the_global_norm_and_refuses_save_checkpoint(sidecar):
    # prevents: each rank clipping its shard by its own norm (not global-norm clipping), a
    # CROSS_RANK_MISMATCH on every healthy step, and save_checkpoint failing on rank 0 while rank 1 hangs
    r0, r1 = run_ranks(_fsdp_host_worker, sidecar.target, timeout=120)
    assert r0["actions"] == r1["actions"] and r0["actions"].count("CLIP") >= 4, r0["actions"]
    for act, after in zip(r0["actions"], r0["clipped_global"]):
        if act == "CLIP":
            assert after == pytest.approx(THRESHOLD, rel=1e-3), r0["clipped_global"]
    assert r0["clipped_global"] == r1["clipped_global"]
    kinds = [i["kind"] for i in sidecar.run_info("fsdp-host-clip")["incidents"]]
    assert "CROSS_RANK_MISMATCH" not in kinds, kinds
    assert "FSDP" in r0["save"] and "FSDP" in r1["save"], (r0["save"], r1["save"])


def _late_file_worker(rank, world, port, target, out_dir, ckpt_dir):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    g = Guard(model, opt, "late-file", target=target, deadline=5.0, snapshots=False)
    x, y = batch(0, seed=rank)
    torch.nn.functional.mse_loss(model(x), y).backward()
    g.step(0, None)
    g.optimizer_step()
    path = os.path.join(ckpt_dir, "step-0.pt")
    if rank == 0:
        time.sleep(1.0)  # rank 1 records it before it exists
        torch.save(model.module.state_dict(), path)
    g.checkpoint_saved(path, 0)
    rec = {"entry": dict(g.checkpoints[0])}
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_a_rank_other_than_0_records_a_checkpoint_it_cannot_see_yet(sidecar):
    # prevents: FileNotFoundError on rank 1 (it only records the entry; rank 0 registers), then rank 0
    # dying in DDP's next collective
    r0, r1 = run_ranks(_late_file_worker, sidecar.target, sidecar.checkpoint_root, timeout=120)
    assert r0["entry"]["checkpoint_id"] and r1["entry"]["dir"] == r0["entry"]["dir"]


def test_a_compiled_ddp_model_is_replicated_not_sharded(sidecar):
    # prevents: the grad norm read as the root of the ranks' summed squares (sqrt(world) too large) and
    # the replicated ranks' consistency check off, for torch.compile(DDP(model))
    import torch.distributed as dist
    from models import MLP, join_gloo
    from trainguard.guard import Guard
    from trainguard.testing import free_port
    join_gloo(0, 1, free_port())
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(MLP())
        g = Guard(torch.compile(ddp, backend="eager"), torch.optim.SGD(ddp.parameters(), lr=0.1), "compiled-ddp",
                  target=sidecar.target, deadline=5.0)
        assert g.grad_sync == "replicated"
        g.close()
    finally:
        dist.destroy_process_group()


def _verified(g, checkpoint_id, timeout=60.0):
    """Waits (on the rank that registered it) until the sidecar verified the checkpoint."""
    from trainguard.checkpoints import checkpoint_state
    end = time.monotonic() + timeout
    while checkpoint_state(g, checkpoint_id)["state"] != "CHECKPOINT_STATE_VERIFIED" and time.monotonic() < end:
        time.sleep(0.05)


def _rollback_ready_ddp(rank, world, port, target, run):
    """A rank of a 2-rank DDP run whose first non-finite step rolls back to the newest known-good
    checkpoint (no snapshots: the checkpoints on disk are the targets): (model, optimizer, guard)."""
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import join_gloo, parallel_mlp, wait_online
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    g = Guard(model, opt, run, target=target, deadline=5.0, mode="sync", snapshots=False,
              policy={"known_good_healthy_steps": 2, "clip_mode": "OFF", "max_consecutive_skips": 0,
                      "validation_warmup_steps": 10**6, "rollback_rewarm_steps": 0})
    wait_online(g)
    return model, opt, g


def _rank0_save_worker(rank, world, port, target, out_dir, ckpt_dir):
    model, opt, g = _rollback_ready_ddp(rank, world, port, target, "rank0-save")
    from models import leave_gloo, train, weights_hash
    from trainguard import Action
    rec = {"rollbacks": []}

    def nan_once_on_rank1(step, x, y, model):
        if rank == 1 and step == 7 and not rec["rollbacks"]:
            y = y.clone(); y[0, 0] = float("nan")
        return x, y

    def on_verdict(step, v):
        if v.action == Action.ROLLBACK:
            rec["rollbacks"].append((step, v.rollback.checkpoint_step, weights_hash(model)))
        elif step == 3:
            rec["saved_hash"] = weights_hash(model)
            if rank == 0:  # the usual DDP idiom: only rank 0 saves
                rec["saved"] = g.save_checkpoint(ckpt_dir, step)
                _verified(g, rec["saved"]["checkpoint_id"])  # before the NaN, however busy the machine

    train(g, model, opt, 10, inject=nan_once_on_rank1, on_verdict=on_verdict, seed=rank)
    rec["final_hash"] = weights_hash(model)
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_save_checkpoint_called_on_rank_0_only_saves_and_both_ranks_roll_back_to_it(sidecar):
    # prevents: rank 0 waiting forever at a barrier inside save_checkpoint that the other ranks, which
    # never call it (``if rank == 0: save``), never reach
    r0, r1 = run_ranks(_rank0_save_worker, sidecar.target, sidecar.checkpoint_root, timeout=150)
    assert r0["saved"]["checkpoint_id"], r0["saved"]
    assert r0["saved_hash"] == r1["saved_hash"]
    for r in (r0, r1):
        assert [(s, c) for s, c, _ in r["rollbacks"]] == [(7, 3)], r["rollbacks"]
        assert r["rollbacks"][0][2] == r0["saved_hash"]  # the weights are the checkpoint's on both ranks
    assert r0["final_hash"] == r1["final_hash"]


def _rank0_validation_worker(rank, world, port, target, out_dir):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp, wait_online, weights_hash
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    g = Guard(model, opt, "rank0-validation", target=target, deadline=5.0, mode="sync", snapshots=False,
              policy={"clip_mode": "OFF", "validation_warmup_steps": 3, "validation_interval_steps": 4})
    wait_online(g)
    rec = {"allowed": {}}
    for step in range(12):
        x, y = batch(step, seed=rank)
        torch.nn.functional.mse_loss(model(x), y).backward()
        g.step(step, None)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        if (step == 4 and rank == 0) or step == 9:  # rank 0 alone (the usual idiom), then every rank
            with g.validation(model.module, step=step) as v:
                rec["allowed"][step] = v.allowed
                if v.allowed:
                    with torch.no_grad():
                        model.module(batch(100)[0])
    rec["hash"] = weights_hash(model)
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_validation_on_rank_0_only_runs_there_and_every_rank_validating_at_a_step_is_told_the_same(sidecar):
    # prevents: guard.validation() waiting in a collective for ranks that do not validate (``if rank == 0:``)
    r0, r1 = run_ranks(_rank0_validation_worker, sidecar.target, timeout=150)
    assert r0["allowed"] == {4: True, 9: True}, r0["allowed"]
    assert r1["allowed"] == {9: True}, r1["allowed"]
    assert r0["hash"] == r1["hash"]


def _damaged_on_one_rank_worker(rank, world, port, target, out_dir, ckpt_dir):
    model, opt, g = _rollback_ready_ddp(rank, world, port, target, "damaged-on-one-rank")
    from models import leave_gloo, train
    from trainguard.errors import TrainingHalted
    if rank == 1:  # this rank's copy of the checkpoint cannot be read (a node's own disk, damaged)
        def unreadable(path, plan):
            raise OSError(f"{path}: read error")
        g.restore_hook = unreadable
    rec = {"halted": ""}

    def nan_on_rank1(step, x, y, model):
        if rank == 1 and step == 7:
            y = y.clone(); y[0, 0] = float("nan")
        return x, y

    def on_verdict(step, v):
        if step == 3:
            saved = g.save_checkpoint(ckpt_dir, step)
            if rank == 0:
                _verified(g, saved["checkpoint_id"])

    try:
        train(g, model, opt, 10, inject=nan_on_rank1, on_verdict=on_verdict, seed=rank)
    except TrainingHalted as e:
        rec["halted"] = str(e)
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_a_checkpoint_one_rank_cannot_restore_halts_every_rank_with_a_reason(sidecar):
    # prevents: the rank whose load failed halting alone while the others waited in the finiteness
    # check's collective for it
    r0, r1 = run_ranks(_damaged_on_one_rank_worker, sidecar.target, sidecar.checkpoint_root, timeout=150)
    assert "OSError" in r1["halted"] and "read error" in r1["halted"], r1
    assert "another rank could not restore it" in r0["halted"], r0


def _zero_worker(rank, world, port, target, out_dir, run):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from models import batch, join_gloo, leave_gloo, parallel_mlp, wait_online, weights_finite
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-2)
    g = Guard(model, opt, run, target=target, deadline=5.0, mode="sync", replay=False,
              policy={"known_good_healthy_steps": 2, "max_consecutive_skips": 2},
              snapshots={"interval": 5, "max_overhead": 0})
    wait_online(g)
    wopt = g.wrap(opt)
    rec = {"after": {}, "rollback": None}
    step = 0
    while step < 20:
        x, y = batch(step, seed=rank)
        if 12 <= step < 15 and rank == 1:  # a burst on one rank: every rank rolls back
            x = x * float("nan")
        torch.nn.functional.mse_loss(model(x), y).backward()
        v = g.step(step, None)
        wopt.step()
        wopt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"non-finite weights after step {step}"
        if v.action.name == "ROLLBACK" and rec["rollback"] is None:
            rec["rollback"] = (v.rollback.checkpoint_step, [p.detach().clone() for p in model.parameters()])
            step = v.resume_step
            continue
        rec["after"][step] = [p.detach().clone() for p in model.parameters()]
        step += 1
    g.close()
    rec["final"] = [p.detach().clone() for p in model.parameters()]
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_zero_redundancy_optimizer_snapshots_its_shard_and_every_rank_rolls_back_to_one_state(sidecar):
    # prevents: the snapshot's optimizer.state_dict() raising "state has not been consolidated" at step 0
    # (ZeRO's own state_dict is a collective): the job died at its first guard.step
    r0, r1 = run_ranks(_zero_worker, sidecar.target, f"zero-snapshots-{time.time_ns()}", timeout=150)
    for r in (r0, r1):
        target, restored = r["rollback"]
        assert target >= 4, target  # a snapshot taken after updates, not the run's first state
        assert all(torch.equal(a, b) for a, b in zip(restored, r["after"][target]))
    assert all(torch.equal(a, b) for a, b in zip(r0["final"], r1["final"]))


def _fsdp1_worker(rank, world, port, target, out_dir):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from torch.distributed.fsdp import FullyShardedDataParallel
    from models import MLP, join_gloo, leave_gloo
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    torch.manual_seed(0)
    model = FullyShardedDataParallel(MLP(), device_id=torch.device("cpu"), use_orig_params=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = Guard(model, opt, f"fsdp1-snapshots-{rank}-{time.time_ns()}", target=target, deadline=5.0)
    torch.save({"store": g.recovery.store}, os.path.join(out_dir, f"rank{rank}.pt"))
    g.close()
    leave_gloo()


def test_fsdp1_has_no_in_memory_snapshots_whose_restore_would_not_reach_its_shards(sidecar):
    # prevents: a ROLLBACK to a snapshot under FSDP1 "restoring" into state_dict()'s gathered copies: the
    # weights stayed as they were while the optimizer state went back, and the guard said it rolled back
    r0, r1 = run_ranks(_fsdp1_worker, sidecar.target, timeout=120)
    assert r0["store"] is None and r1["store"] is None
