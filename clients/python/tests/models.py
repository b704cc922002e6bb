"""Small seeded models and data for the tests (CPU, a few ms per step)."""
import sys

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, d=16, h=32):
        super().__init__()
        self.inp = nn.Linear(d, h)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(h, h), nn.Tanh()) for _ in range(2)])
        self.out = nn.Linear(h, 1)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = b(x)
        return self.out(x)


def batch(step, d=16, n=32, seed=0):
    g = torch.Generator().manual_seed(seed * 100003 + step)
    x = torch.randn(n, d, generator=g)
    y = x[:, :1] * 0.5 + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def fit_plain(model, opt, steps, start=0, sched=None):
    """Unguarded training steps [start, steps) on ``batch`` (dropout on the output: the RNG matters)."""
    for step in range(start, steps):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(torch.nn.functional.dropout(model(x), 0.1), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()


def weights_finite(model):
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def weights_hash(model):
    """sha256 of every parameter's bytes: equal across ranks exactly when their weights are."""
    import hashlib
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def make(seed=0, lr=1e-2, opt="adamw", dtype=torch.float32):
    torch.manual_seed(seed)
    model = MLP().to(dtype)
    if opt == "adamw":
        optim = torch.optim.AdamW(model.parameters(), lr=lr)
    else:
        optim = torch.optim.SGD(model.parameters(), lr=lr)
    return model, optim


def train(guard, model, optim, steps, start=0, inject=None, on_verdict=None, seed=0):
    """A plain guarded loop. ``inject(step, x, y, model)`` may return a poisoned (x, y).
    Returns the list of verdicts; asserts the weights stay finite after every step."""
    verdicts = []
    step = start
    while step < steps:
        x, y = batch(step, seed=seed)
        if inject is not None:
            x, y = inject(step, x, y, model)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        v = guard.step(step, loss)
        guard.optimizer_step()
        optim.zero_grad(set_to_none=True)
        assert weights_finite(model), f"non-finite weights after step {step} ({v.action.name})"
        verdicts.append(v)
        if on_verdict is not None:
            on_verdict(step, v)
        step = v.resume_step if v.resume_step is not None else step + 1
    return verdicts


# ---------------------------------------------------------------------------------- several ranks

def join_gloo(rank, world, port):
    """Joins a gloo process group of ``world`` CPU ranks on 127.0.0.1:``port`` (one call per rank)."""
    import os
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def leave_gloo():
    """Leaves the process group once every rank got here: rank 0 hosts the group's store, and a rank
    still using it when rank 0 tore it down can abort ("terminate called without an active exception")."""
    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()


def parallel_mlp(mode, seed=0):
    """The test MLP under DDP (``mode="ddp"``) or FSDP2 (``"fsdp"``: ``fully_shard`` per block and root)."""
    torch.manual_seed(seed)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard
        model = MLP()
        for b in model.blocks:
            fully_shard(b)
        fully_shard(model)
        return model
    return torch.nn.parallel.DistributedDataParallel(MLP())


def wait_online(g):
    """A loaded CI machine may refuse a rank's first OpenRun; multi-rank tests need every rank online."""
    import time
    from trainguard import answers
    for _ in range(20):
        if not g.connection.offline:
            return
        time.sleep(0.5)
        answers.open_run(g, 10.0)
    raise AssertionError("the sidecar did not answer OpenRun for 10 s")


def run_ranks(worker, target, *args, world=2, timeout=180):
    """Spawns ``world`` processes running ``worker(rank, world, port, target, out_dir, *args)`` (each
    writes ``out_dir/rank<r>.pt``), waits for them, and returns what each wrote. A hang fails here."""
    import os
    import tempfile
    import torch.multiprocessing as mp
    from trainguard.testing import free_port
    out = tempfile.mkdtemp()
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, world, port, target, out) + tuple(args)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]  # a hang would time out here
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(world)]


class FlipOnce:
    """A forward hook that turns one activation of ``module`` into NaN once, at ``step``: a one-off
    bit flip (what a replay classifies TRANSIENT). ``mark`` is the loop's inject callback that tells
    the hook which step runs."""

    def __init__(self, module, step):
        self.at, self.armed, self.step = step, True, -1
        module.register_forward_hook(self._hook)

    def _hook(self, mod, inp, out):
        if self.step == self.at and self.armed:
            self.armed = False
            out = out.clone()
            out[0, 0] = float("nan")
        return out

    def mark(self, step, x, y):
        self.step = step
        return x, y


def trainer_isnan_calls(monkeypatch):
    """A list that grows by one at each ``torch.isnan`` the transformers Trainer's own module calls
    (its per-micro-batch NaN filter, a host read of the loss)."""
    calls, isnan = [], torch.isnan

    def counted(*args, **kwargs):
        if sys._getframe(1).f_globals.get("__name__") == "transformers.trainer":
            calls.append(1)
        return isnan(*args, **kwargs)
    monkeypatch.setattr(torch, "isnan", counted)
    return calls


def guarded_update(g, opt, step, loss, actions):
    """Backward and the update of a loop guarded by ``g`` (guard.step, then guard.optimizer_step;
    the verdict's action appended to ``actions``) or, with ``g`` None, the same loop unguarded."""
    loss.backward()
    if g is not None:
        actions.append(g.step(step, loss).action)
        g.optimizer_step()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
