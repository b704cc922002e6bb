"""Several ranks used the wrong way, said in words at once instead of a hang, a crash or a silent merge
(against the real sidecar jar, 2 gloo ranks on the CPU): a Guard built on rank 0 only, ranks that opened
different run ids, DDP's join() context, ranks that number their steps differently (host path and device
gate)."""
import os
import sys
import time

import pytest
import torch

from models import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.torch2  # the device gate on the CPU needs fused AdamW: torch >= 2.4


def _guard_on_rank0_worker(rank, world, port, target, out_dir):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp
    from trainguard import distributed
    from trainguard.errors import TrainguardError
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    distributed.EveryRank.WAIT_S = 2.0
    model = parallel_mlp("ddp")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    g = Guard(model, opt, "guard-on-rank0", target=target, deadline=5.0, snapshots=False) if rank == 0 else None
    rec = {}
    x, y = batch(0, seed=rank)
    torch.nn.functional.mse_loss(model(x), y).backward()  # DDP's own all_reduce: both ranks
    if g is not None:
        try:
            g.step(0, None)
            rec["error"] = ""
        except TrainguardError as e:
            rec["error"] = str(e)
        g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_a_guard_built_on_rank_0_only_says_so_at_its_first_step_instead_of_waiting_in_a_collective(sidecar):
    # prevents: rank 0 waiting forever in the step's agreement (or pairing it with another rank's
    # collective) when the other ranks built no Guard
    r0, _ = run_ranks(_guard_on_rank0_worker, sidecar.target, timeout=120)
    assert "only 1 of 2 ranks built a Guard" in r0["error"] and "every rank" in r0["error"], r0


def _timed_end(rec, t0, guard, out_dir, rank):
    """A worker's end: how long until it stopped, the Guard closed, the record saved, the group left."""
    from models import leave_gloo
    rec["waited"] = time.monotonic() - t0
    guard.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def _run_id_of_the_second_worker(rank, world, port, target, out_dir, stamp):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, parallel_mlp
    from trainguard.errors import TrainguardError
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    # the quickstart's f"my-run-{int(time.time())}", on ranks that started on either side of a second
    g = Guard(model, opt, f"run-id-{stamp + rank}", target=target, deadline=5.0, snapshots=False)
    rec, t0 = {"error": ""}, time.monotonic()
    x, y = batch(0, seed=rank)
    torch.nn.functional.mse_loss(model(x), y).backward()
    try:
        g.step(0, None)
    except TrainguardError as e:
        rec["error"] = str(e)
    _timed_end(rec, t0, g, out_dir, rank)


def test_ranks_that_opened_different_run_ids_are_told_at_once_with_both_ids(sidecar):
    # prevents: a run id made of the time differing across ranks that started in different seconds, each rank
    # waiting 120 s and then told "only 1 of 2 ranks built a Guard ... not only on rank 0", though both had
    stamp = time.time_ns()
    r0, r1 = run_ranks(_run_id_of_the_second_worker, sidecar.target, stamp, timeout=120)
    for me, other, r in ((0, 1, r0), (1, 0, r1)):
        assert f"rank {other} opened run 'run-id-{stamp + other}' where this rank (rank {me}) opened" in r["error"], r
        assert r["waited"] < 30, r


def _join_worker(rank, world, port, target, out_dir, run):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, parallel_mlp
    from trainguard.errors import TrainguardError
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = Guard(model, opt, run, target=target, deadline=5.0, snapshots=False, replay=False)
    rec, t0 = {"error": ""}, time.monotonic()
    try:
        with model.join():  # uneven inputs: rank 1 has fewer batches
            for step in range(6 if rank == 0 else 4):
                x, y = batch(step, seed=rank)
                torch.nn.functional.mse_loss(model(x), y).backward()
                g.step(step, None)
                g.optimizer_step()
                opt.zero_grad()
    except TrainguardError as e:
        rec["error"] = str(e)
    _timed_end(rec, t0, g, out_dir, rank)


def test_guard_step_inside_ddp_join_is_refused_in_words_instead_of_hanging(sidecar):
    # prevents: `with model.join():` (uneven inputs) pairing the guard's per-step agreement with DDP's join
    # all_reduce on a rank that ran out of data: a hang until the process group's timeout, or a gloo abort
    r0, r1 = run_ranks(_join_worker, sidecar.target, f"ddp-join-{time.time_ns()}", timeout=120)
    for r in (r0, r1):
        assert "join() context" in r["error"] and "same number of batches" in r["error"], r
        assert r["waited"] < 30, r


def _offset_step_worker(rank, world, port, target, out_dir, run, device_gate, offset_from=3):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp, wait_online, weights_hash
    from trainguard.errors import TrainguardError
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    # fused: the device gate's in-stream agreement; foreach: the host path's
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=device_gate)
    g = Guard(model, opt, run, target=target, deadline=5.0, snapshots=False, replay=False, device_gate=device_gate)
    wait_online(g)
    rec = {"error": None, "steps": 0, "hash": [], "logged": []}
    import logging

    class Said(logging.Handler):
        def emit(self, record):
            rec["logged"].append(record.getMessage())
    logging.getLogger("trainguard").addHandler(Said(level=logging.ERROR))
    try:
        for step in range(6):
            x, y = batch(step, seed=rank)
            torch.nn.functional.mse_loss(model(x), y).backward()
            g.step(step + (1 if rank == 1 and step >= offset_from else 0), None)  # rank 1's counter runs ahead
            g.optimizer_step()
            opt.zero_grad(set_to_none=True)
            rec["steps"] += 1
            rec["hash"].append(weights_hash(model.module))
    except TrainguardError as e:
        rec["error"] = str(e)
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_ranks_that_pass_different_step_numbers_are_stopped_together_with_the_numbers_named(sidecar):
    # prevents: a loop bug (a per-rank counter) going unsaid while the sidecar filed a "silent data
    # corruption" CROSS_RANK_MISMATCH at every step
    r0, r1 = run_ranks(_offset_step_worker, sidecar.target, f"offset-steps-{time.time_ns()}", False, timeout=120)
    for r in (r0, r1):
        assert r["steps"] == 3, r
        assert r["error"] and "different step numbers" in r["error"] and "from 3 to 4" in r["error"], r


@pytest.mark.torch2  # fused AdamW on the CPU: torch >= 2.4
def test_ranks_on_the_device_gate_that_pass_different_step_numbers_skip_that_step_and_stop_at_the_next(sidecar):
    # prevents: the device gate (no host read) applying updates of steps the ranks numbered
    # differently, where the host path stops them: the in-stream collective carries the step too
    r0, r1 = run_ranks(_offset_step_worker, sidecar.target, f"offset-gated-{time.time_ns()}", True, timeout=120)
    for r in (r0, r1):
        assert r["steps"] == 4, r  # step 3 was gated (its update skipped on the device); step 4 raised
        assert r["error"] and "different step numbers" in r["error"], r
    assert "this rank passed 3" in r0["error"] and "this rank passed 4" in r1["error"]
    assert r0["hash"] == r1["hash"] and r0["hash"][3] == r0["hash"][2]  # the mismatched step left the weights


@pytest.mark.torch2  # fused AdamW on the CPU: torch >= 2.4
def test_ranks_on_the_device_gate_that_number_only_the_last_step_differently_are_told_at_close(sidecar):
    # prevents: the last step's mismatch (its vector is read at a next step that never comes) skipped on the
    # device without a word, and recorded by the sidecar as an applied step
    run = f"offset-last-{time.time_ns()}"
    r0, r1 = run_ranks(_offset_step_worker, sidecar.target, run, True, 5, timeout=120)
    for r in (r0, r1):
        assert r["steps"] == 6 and r["error"] is None, r
        assert any("different step numbers" in m and "at the last step" in m for m in r["logged"]), r["logged"]
    assert r0["hash"][5] == r0["hash"][4]  # the mismatched last step left the weights
    steps = sidecar.get(f"/api/runs/{run}/steps?rank=0&from=5&to=5")["steps"]  # recorded as the skip it was
    assert [b["skips"] for b in steps["buckets"]] == [1], steps
