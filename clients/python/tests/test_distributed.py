"""2-rank gloo run where only rank 1 sees a NaN: both ranks skip the same step, DDP never hangs."""
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(rank, world, port, target, out_dir):
    sys.path[:0] = [os.path.dirname(HERE), HERE]
    from models import MLP, batch, leave_gloo, weights_finite
    from trainguard import Action
    from trainguard.guard import Guard
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(MLP())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = Guard(model, opt, "ddp", target=target, policy={"known_good_healthy_steps": 5})
    actions = []
    for step in range(20):
        x, y = batch(step, seed=rank)
        if rank == 1 and step == 7:
            y = y.clone(); y[0, 0] = float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        v = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model)
        actions.append(int(v.action))
    g.close()
    sums = [float(p.detach().sum()) for p in model.parameters()]
    torch.save({"actions": actions, "sums": sums}, os.path.join(out_dir, f"rank{rank}.pt"))
    leave_gloo()


def run_two_ranks(target):
    from trainguard.testing import free_port
    out = tempfile.mkdtemp()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, 2, free_port(), target, out)) for r in range(2)]
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, target, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]  # a hang would time out here
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(2)]


def check(results):
    from trainguard import Action
    a0, a1 = results[0]["actions"], results[1]["actions"]
    assert a0 == a1, (a0, a1)
    assert a0[7] == Action.SKIP and all(a in (Action.APPLY, Action.CLIP) for i, a in enumerate(a0) if i != 7)
    assert results[0]["sums"] == results[1]["sums"]  # no rank applied an update another skipped


def test_two_ranks_agree_with_fake_sidecar():
    from fake_sidecar import FakeSidecar
    s = FakeSidecar().start()
    try:
        check(run_two_ranks(s.target))
    finally:
        s.stop()


def test_two_ranks_agree_with_real_sidecar(sidecar):
    check(run_two_ranks(sidecar.target))
