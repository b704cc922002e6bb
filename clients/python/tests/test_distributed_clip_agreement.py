"""2 gloo ranks on the device gate whose clip thresholds differ: each rank takes its bounds from its
own verdicts, and two verdicts for the same step can carry different bounds (the sidecar updates
its statistics with every rank's report in turn). The ranks must still divide their identical
gradients by the same number, or their weights part for good."""
import os
import sys

import pytest
import torch

from fake_sidecar import FakeSidecar
from models import run_ranks

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.torch2  # fused AdamW on the CPU: torch >= 2.4

# rank 0's sidecar would clip every step of this model (grad norms 0.25-0.65), rank 1's none: agreed,
# at their mean, they clip some steps and not others (the tightest would clip all, the loosest none)
TIGHT, LOOSE = 0.1, 0.7


def _worker(rank, world, port, targets, out_dir):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import batch, join_gloo, leave_gloo, parallel_mlp, weights_hash
    from trainguard.guard import Guard
    join_gloo(rank, world, port)
    model = parallel_mlp("ddp")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = Guard(model, opt, "clip-agreement", target=targets.split("|")[rank], device_gate=True, deadline=5.0,
              snapshots=False)
    rec = {"hash": [], "norm": [], "verdict_thr": []}
    for step in range(12):
        x, y = batch(step, seed=rank)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        rec["norm"].append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))))
        g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        rec["hash"].append(weights_hash(model.module))
    g.flush(10)
    rec["clips"] = g.counters["clips"]
    g.close()
    torch.save(rec, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def test_ranks_whose_clip_thresholds_differ_divide_by_the_same_number():
    # prevents: one rank clipping a step and the other not (each by its own bounds): weights that part for good
    tight, loose = FakeSidecar(clip=TIGHT), FakeSidecar(clip=LOOSE)
    tight.start()
    loose.start()
    try:
        r0, r1 = run_ranks(_worker, f"{tight.target}|{loose.target}")
    finally:
        tight.stop()
        loose.stop()
    agreed = (TIGHT + LOOSE) / 2
    assert r0["norm"] == r1["norm"]  # DDP: the same gradients on both ranks
    assert r0["hash"] == r1["hash"]  # and the same weights after every step
    # both ranks clipped by the agreed threshold, and counted it
    expected = sum(n > agreed for n in r0["norm"])
    assert 0 < expected < len(r0["norm"]) and r0["clips"] == r1["clips"] == expected, r0["norm"]


def test_a_rank_entry_follows_the_threshold_whether_there_is_one_and_the_step():
    from trainguard.distributed import RankEntries
    entry = RankEntries(torch.device("cpu"), 2)
    for step, (thr, want) in enumerate([(0.3, [0.3, 1.0]), (0.5, [0.5, 1.0]), (0.0, [0.0, 0.0]), (0.2, [0.2, 1.0]),
                                        (0.2, [0.2, 1.0])]):
        assert entry.of(thr, step + 7).tolist() == want + [float(step + 7)], thr
    assert entry.of(0.2, 2 ** 20 + 3).tolist() == [0.2, 1.0, 3.0]  # modulo step_modulus(2)


def test_the_step_modulus_keeps_every_sum_of_the_step_check_exact_in_float64():
    from trainguard.distributed import step_modulus
    for world in (1, 2, 8, 1000, 8192, 1 << 16, 1 << 20):
        m = step_modulus(world)
        top = world * (m - 1) ** 2  # the largest sum of squares
        assert world * top < 2 ** 53 and (world * (m - 1)) ** 2 < 2 ** 53, world
    assert step_modulus(2) == 1 << 20
