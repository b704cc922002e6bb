"""The device gate replayed from a CUDA graph (trainguard.gate_graph, trainguard.grad_table): the
same skips and clips as the eager kernels, wherever the gradients land each step, and the eager
kernels for gradients the address table cannot read. Needs a GPU and Triton: run on the lent GPU
machine (conftest.py says how; results in docs/benchmarks.md, "Issue 21, third pass")."""
import pytest
import torch

from trainguard.guard import Guard
from fake_sidecar import FakeSidecar
from models import MLP, batch

NAN_STEPS = (9, 10)


@pytest.fixture
def fake():
    s = FakeSidecar(max_grad_norm=100.0, clip=0.5)  # a low clip threshold: many steps are clipped
    s.start()
    yield s
    s.stop()


class StridedMLP(MLP):
    """One weight stored transposed: its gradient is not one dense block from its address."""

    def __init__(self):
        super().__init__()
        self.inp.weight = torch.nn.Parameter(self.inp.weight.detach().t().contiguous().t())


def run(fake, name, graphs, model_cls=MLP, steps=24, move_at=(4, 5, 16), dtype=torch.float32, early=False,
        compile_mode=None):
    torch.manual_seed(0)
    model = model_cls().cuda().to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    # pure bf16 weights: the update protector would take the host path; the gate is what is tested here
    g = Guard(model, opt, name, target=fake.target, device_gate=True, deadline=5.0, protect_update=False)
    g.gated.graphs.enabled = graphs
    fwd = torch.compile(model, mode=compile_mode) if compile_mode else model  # compiled with the guard's hooks on
    held, weights = [], []
    for step in range(steps):
        x, y = (t.cuda().to(dtype) for t in batch(step))
        if step == NAN_STEPS[0]:  # a NaN input: every module statistic is NaN too
            x = x.clone()
            x[0, 0] = float("nan")
        elif step in NAN_STEPS:   # a NaN target: only the loss (and the gradients)
            y = y.clone()
            y[0, 0] = float("nan")
        loss = torch.nn.functional.mse_loss(fwd(x) * 3.0, y)
        if early:  # measured and gated on the autograd thread when backward ends (backward_gate)
            assert g.gate_on_backward(loss)
        loss.backward()
        g.step(step, loss)
        g.optimizer_step()
        if step in move_at:
            held.append([p.grad for p in model.parameters()])  # kept alive: the next grads land elsewhere
        opt.zero_grad(set_to_none=True)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert g.flush(10)
    # what the sidecar was told of each step: the loss and the module statistics the graph read by address
    told = {r.step: (r.loss, list(r.module_stats.names), list(r.module_stats.finite))
            for r in fake.reports if r.run_id == name}
    out = dict(g.gated.graphs.counters, address_uploads=g.gated.graphs.address_uploads,
               skips=g.counters["skips"], clips=g.counters["clips"],
               early=dict(g.backward_gate.counters), told=told)
    g.close()
    return weights, out


def assert_same_reports(eager, graphed):
    """The losses the graph read by address are the eager ones: exactly while the weights are the
    same (steps 0 and 1: step 0 runs eagerly in both), then within the clip divisor's last bits
    (module docstring of gate_graph); the module statistics' finite flags agree on every step."""
    assert sorted(eager) == sorted(graphed) == list(range(24))
    assert not any(graphed[NAN_STEPS[0]][2]) and all(graphed[NAN_STEPS[1]][2])
    for step in eager:
        (l1, n1, f1), (l2, n2, f2) = eager[step], graphed[step]
        assert n1 == n2 and n1 and f1 == f2, f"step {step}: module statistics {n1} {f1} vs {n2} {f2}"
        if step < 2 or l1 != l1:
            assert l1 == l2 or (l1 != l1 and l2 != l2), f"step {step}: loss {l1} vs {l2}"
        else:
            assert l2 == pytest.approx(l1, rel=1e-5), f"step {step}: loss {l1} vs {l2}"


def assert_same_training(eager, graphed):
    for step, (a, b) in enumerate(zip(eager, graphed)):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=lambda m: f"after step {step}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_gate_skips_and_clips_as_the_eager_gate_while_gradients_move(fake, dtype):
    eager, e = run(fake, f"graph-off-{dtype}", graphs=False, dtype=dtype)
    graphed, gr = run(fake, f"graph-on-{dtype}", graphs=True, dtype=dtype)
    assert e["replays"] == 0 and gr["captures"] == 1
    assert gr["replays"] == 23 and gr["eager"] == 1, gr  # every step after the first, moved gradients included
    assert (gr["skips"], gr["clips"]) == (e["skips"], e["clips"]) and gr["skips"] == 2 and gr["clips"] >= 5
    if dtype == torch.float32:
        assert_same_training(eager, graphed)
        assert_same_reports(e["told"], gr["told"])
    # both NaN steps (replayed from the graph) left the weights as they were, and training went on
    assert all(torch.equal(x, y) for x, y in zip(graphed[8], graphed[10]))
    assert not all(torch.equal(x, y) for x, y in zip(graphed[10], graphed[11]))
    assert all(bool(torch.isfinite(t).all()) for t in graphed[-1])


def test_gradients_the_table_cannot_address_take_the_eager_kernels(fake):
    eager, e = run(fake, "strided-off", graphs=False, model_cls=StridedMLP)
    graphed, gr = run(fake, "strided-on", graphs=True, model_cls=StridedMLP)
    assert gr["replays"] == 0 and gr["eager"] == 24, gr
    assert gr["skips"] == e["skips"] == 2
    for a, b in zip(eager, graphed):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_graph_gate_at_backward_end_trains_as_the_gate_at_step(fake):
    late, lt = run(fake, "graph-late", graphs=True)
    early, er = run(fake, "graph-early", graphs=True, early=True)
    assert er["captures"] == 1 and er["replays"] >= 23, er  # captured on the autograd thread, then replayed
    assert er["early"]["measured"] == 24 and er["early"]["used"] >= 18, er
    assert (er["skips"], er["clips"]) == (lt["skips"], lt["clips"]) and er["skips"] == 2
    assert_same_training(late, early)


def test_a_model_compiled_into_cuda_graphs_is_gated_as_the_plain_one(fake):
    """torch.compile(mode="reduce-overhead"): forward and backward replay as CUDA graphs, the watched
    statistics and the gradients are outputs in the graphs' memory pool. The gate skips the same NaN
    steps and clips as often as on the plain model; compiled kernels round differently, so the
    weights are compared loosely. (The loss here is computed outside the compiled model, a fresh
    tensor each step, so the address table is still copied every step: 24 of 24 in the first run.)"""
    plain, p = run(fake, "cudagraphs-off", graphs=True, move_at=())
    compiled, c = run(fake, "cudagraphs-on", graphs=True, move_at=(), compile_mode="reduce-overhead")
    assert c["captures"] == 1 and c["replays"] == 23 and c["address_uploads"] == 24, c  # the loss moves
    assert (c["skips"], c["clips"]) == (p["skips"], p["clips"]) and c["skips"] == 2
    assert all(torch.equal(x, y) for x, y in zip(compiled[8], compiled[10]))  # both NaN steps skipped
    assert not all(torch.equal(x, y) for x, y in zip(compiled[10], compiled[11]))
    for a, b in zip(plain[-1], compiled[-1]):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    names = c["told"][NAN_STEPS[0]][1]
    assert names and names == p["told"][NAN_STEPS[0]][1]  # the compiled model's watched statistics were read
    assert not any(c["told"][NAN_STEPS[0]][2]) and all(c["told"][NAN_STEPS[1]][2])  # by address, as on the plain one
