"""Several ranks keep their in-memory snapshots in step (2 gloo ranks, DDP, CPU, the real sidecar):
they pace them by measured cost too (each rank turns what its last snapshot cost into a number of
usual steps, and the confirmation's collective agrees on the largest), and a snapshot whose part on
one rank is not finite is dropped by every rank at once, in that same collective."""
import os
import sys
import time

import torch

from models import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 60
SLOW_S = 0.3  # what rank 1's snapshots cost: a step that much longer right after each one


def _worker(rank, world, port, target, out_dir, corrupt):
    """``corrupt``: rank 1's second snapshot is made non-finite right after its take (a corrupted
    copy), snapshots are not paced; else rank 1 pays SLOW_S after each of its snapshots."""
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import join_gloo, leave_gloo, parallel_mlp, train, wait_online
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = Guard(model, opt, f"ddp-snapshots-{corrupt}", target=target, deadline=5.0,
              snapshots={"interval": 2, "max_overhead": 0 if corrupt else 0.01},
              policy={"known_good_healthy_steps": 4})
    wait_online(g)
    taken, agreed, slots, seen = [], [], [], [0]

    def note(step, verdict):
        if g.recovery.counters["snapshots"] > seen[0]:
            seen[0] = g.recovery.counters["snapshots"]
            taken.append(step)
            if rank == 1 and corrupt and len(taken) == 2:
                s = max(g.recovery.store.slots, key=lambda x: x.taken_at)
                s.host[0].fill_(float("nan"))
                s.finite_flag = torch.tensor(False)
            elif rank == 1 and not corrupt:  # this rank's snapshots are expensive, rank 0's are not
                time.sleep(SLOW_S)
        agreed.append(g.recovery.ring.agreed_steps)
        slots.append([(x.step, x.state) for x in g.recovery.store.slots])
    train(g, model, opt, STEPS, seed=rank, on_verdict=note)  # asserts finite weights after every step
    g.close()
    torch.save({"taken": taken, "agreed": agreed, "slots": slots}, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_ranks_pace_snapshots_by_an_agreed_cost_and_still_take_them_at_the_same_steps(sidecar):
    # prevents: several ranks snapshotting every `interval` steps whatever a snapshot costs (2-4 % of
    # a DDP step on 2 H200s), or ranks that pace by their own clocks snapshotting at different steps
    r0, r1 = run_ranks(_worker, sidecar.target, False)
    assert r0["taken"] == r1["taken"], (r0["taken"], r1["taken"])
    assert r0["agreed"] == r1["agreed"]
    taken, agreed = r0["taken"], r0["agreed"]
    assert len(taken) >= 2, taken  # the starting state, then one whose cost was measured
    # at 1 %, that cost (counted as at most 10 usual steps) asks for 1,000 usual steps, or for steps
    # of 0.2 s still 150: more than the run has, and no snapshot came after the ranks agreed on it
    # (unpaced, one would be due every 4-6 steps)
    assert agreed[-1] > STEPS, agreed
    first = agreed.index(agreed[-1])
    assert all(t <= first for t in taken), (taken, first)


def test_a_snapshot_not_finite_on_one_rank_is_dropped_by_every_rank_at_the_same_step(sidecar):
    # prevents: the rank whose part is not finite dropping the snapshot alone, so that only the
    # other rank enters the confirmation's collective for it (mismatched collectives, a hang)
    r0, r1 = run_ranks(_worker, sidecar.target, True)
    assert r0["taken"] == r1["taken"] and len(r0["taken"]) >= 4, (r0["taken"], r1["taken"])
    assert r0["slots"] == r1["slots"]  # every slot's step and state, after every step, on both ranks
    second = r0["taken"][1]
    held = next(i for i, slots in enumerate(r0["slots"]) if any(step == second for step, _ in slots))
    dropped = [i for i, slots in enumerate(r0["slots"][held + 1:]) if (second, "EMPTY") in slots or
               all(step != second for step, _ in slots)]  # after the ring held it
    assert dropped and all(state != "KNOWN_GOOD" for slots in r0["slots"] for step, state in slots if step == second)
