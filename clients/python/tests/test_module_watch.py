"""ModuleWatch: what each watched module call's statistic is, and when it is taken.

While autograd keeps a watched output anyway, the hook keeps a reference and one batched max |x|
takes the statistics when the model's forward returns (stats.ModuleWatch); a module's first call
is measured in its hook as a probe. These tests pin that the values are the ones a reduction in the
hook gives, in call order, on every path (probe and batched, no grad, folded calls, outputs changed
in place, activation checkpointing, a forward that raises, a failed batched reduction)."""
import dataclasses
import inspect

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trainguard import stats
from trainguard.stats import ModuleWatch
from trainguard.watch_names import auto_watch
from models import MLP, batch

# torch 1.13 cannot tell a recompute or saved-tensor hooks from a plain forward: it never batches
BATCHES = stats._tracing._task is not None and stats._tracing._saved_hooks is not None
CPU = torch.device("cpu")
ALWAYS_CALL = "always_call" in inspect.signature(nn.Module.register_forward_hook).parameters


def max_abs(t):
    return float(t.detach().abs().max())


def outputs_of(model, names, fn):
    """Runs ``fn`` and returns each call's output (detached copies) of the named modules, in call order."""
    seen, modules = [], dict(model.named_modules())
    hs = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.append((n, o.detach().clone())))
          for n in names]
    try:
        fn()
    finally:
        for h in hs:
            h.remove()
    return seen


def test_statistics_are_each_calls_max_abs_probed_first_then_taken_when_the_forward_returns():
    torch.manual_seed(0)
    model = MLP()
    names = auto_watch(model)
    watch = ModuleWatch(model, names)
    for step in range(3):
        x, _ = batch(step)
        seen = outputs_of(model, names, lambda: model(x))
        assert not watch._kept, "the root module's forward hook takes the kept outputs' statistics"
        got_names, values = watch.take_list(CPU)
        assert got_names == [n for n, _ in seen] == ["inp", "blocks.0", "blocks.1", "out"]
        assert all(v.dtype == torch.float32 and v.dim() == 0 for v in values)
        assert [float(v) for v in values] == [max_abs(o) for _, o in seen], step
    assert watch._batched == ({0, 1, 2, 3} if BATCHES else set()) and not watch._in_hook


class Recursive(torch.nn.Module):
    """A model whose forward calls itself (nested root calls)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def forward(self, x, depth=1):
        x = self.b(self.a(x))
        return self(x, depth - 1) if depth > 0 else x


def test_a_forward_without_grad_records_nothing_even_when_the_model_calls_itself():
    # prevents: the inner root call's end marking the outer no-grad forward as this step's again
    model = Recursive()
    watch = ModuleWatch(model, ["a", "b"])
    with torch.no_grad():
        model(torch.full((2, 4), float("nan")))
    assert watch.take_list(CPU) == ([], [])
    model(torch.ones(2, 4))  # with grad: both calls of both modules recorded
    names, values = watch.take_list(CPU)
    assert names == ["a", "b", "a", "b"] and all(torch.isfinite(v) for v in values)


def test_a_call_without_grad_is_measured_in_its_hook():
    torch.manual_seed(0)
    model = MLP()
    watch = ModuleWatch(model, auto_watch(model))
    model(batch(0)[0])
    watch.take_list(CPU)  # probed: batched from now on, where autograd keeps the output
    x = torch.randn(5, 32)
    with torch.no_grad():
        out = model.blocks[0](x)  # the root's forward never returns: nothing would take a kept output
    assert not watch._kept
    names, values = watch.take_list(CPU)
    assert names == ["blocks.0"] and float(values[0]) == max_abs(out)


def test_calls_past_max_calls_fold_into_the_last_entry_as_their_max():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin)
    watch = ModuleWatch(model, ["0"])
    model(torch.randn(3, 4))
    watch.take_list(CPU)  # the probe
    n = ModuleWatch.MAX_CALLS + 4
    xs = [torch.randn(3, 4) * (k + 1) for k in range(n)]
    watch.remove()
    outs = [max_abs(lin(x)) for x in xs]  # the same calls, unwatched
    watch.attach()
    for x in xs:
        lin(x)  # called directly: the root's forward never returns, the take settles
    assert len(watch._kept) == (ModuleWatch.MAX_CALLS if BATCHES else 0)
    assert all(t.grad_fn is None for _, t, _ in watch._kept)  # kept detached: not the graph behind them
    names, values = watch.take_list(CPU)
    assert names == ["0"] * ModuleWatch.MAX_CALLS
    expect = outs[:ModuleWatch.MAX_CALLS - 1] + [max(outs[ModuleWatch.MAX_CALLS - 1:])]
    assert [float(v) for v in values] == expect


class MaskedHead(nn.Module):
    """``head``'s logits are masked in place after its hook (``masked_fill_`` with -inf, as a
    constrained vocabulary does), every step or from ``mask_from`` on."""

    def __init__(self, mask_from=0):
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 6)
        self.mask_from, self.calls = mask_from, 0

    def forward(self, x):
        logits = self.head(self.body(x))
        if self.calls >= self.mask_from:
            logits.masked_fill_(torch.arange(6) >= 4, float("-inf"))
        self.calls += 1
        return torch.log_softmax(logits, -1).clamp(min=-30)


def test_an_output_changed_in_place_reads_its_own_value_from_the_first_step_on():
    # Prevents: a healthy step skipped because a statistic read the masked (-inf) logits.
    torch.manual_seed(0)
    model = MaskedHead()
    watch = ModuleWatch(model, ["body", "head"])
    x = torch.randn(5, 4)
    for step in range(3):
        seen = outputs_of(model, ["body", "head"], lambda: model(x).sum().backward())
        _, values = watch.take_list(CPU)
        assert [float(v) for v in values] == [max_abs(o) for _, o in seen], step  # finite: the hook's value
    assert watch._in_hook == ({1} if BATCHES else set()) and watch._batched == ({0} if BATCHES else set())


def test_a_batched_output_changed_in_place_later_reads_zero_once_then_is_measured_in_its_hook():
    torch.manual_seed(0)
    model = MaskedHead(mask_from=2)
    watch = ModuleWatch(model, ["body", "head"])
    x = torch.randn(5, 4)
    got = []
    for step in range(4):
        seen = outputs_of(model, ["head"], lambda: model(x).sum().backward())
        _, values = watch.take_list(CPU)
        got.append((float(values[1]), max_abs(seen[0][1])))
    assert got[0][0] == got[0][1] and got[1][0] == got[1][1]
    assert got[2][0] == (0.0 if BATCHES else got[2][1])  # step 2: not measured (the masked value is no output's)
    assert got[3][0] == got[3][1]
    assert watch._in_hook == ({1} if BATCHES else set())


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.Tanh()) for _ in range(3)])

    def forward(self, x, reentrant=None):
        for b in self.blocks:
            x = b(x) if reentrant is None else checkpoint(b, x, use_reentrant=reentrant)
        return x


@pytest.mark.parametrize("reentrant", [True, False])
def test_activation_checkpointing_keeps_no_output_the_checkpoint_frees(reentrant):
    torch.manual_seed(0)
    model = Stack()
    watch = ModuleWatch(model, auto_watch(model))
    x = torch.randn(4, 8, requires_grad=True)
    model(x).sum().backward()
    watch.take_list(CPU)  # probed
    y = model.blocks[0](x)  # a plain call, the control: kept where torch can tell
    assert len(watch._kept) == int(BATCHES)
    # no grad (reentrant) or under saved-tensor hooks (non-reentrant): measured in the hook, nothing kept
    z = checkpoint(model.blocks[0], x, use_reentrant=reentrant)
    assert len(watch._kept) == int(BATCHES)
    watch.take_list(CPU)
    model(x, reentrant=reentrant).sum().backward()  # a reentrant one runs the forwards again in backward
    assert not watch._kept
    names, values = watch.take_list(CPU)
    once = ["blocks.0", "blocks.1", "blocks.2"]
    # the recompute is not recorded again (torch 1.13 cannot tell it from a forward: it is)
    assert names == (once if BATCHES else once + once[::-1]), names
    assert all(torch.isfinite(v) for v in values)
    del y, z


class Fails(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.fail = False

    def forward(self, x):
        h = self.a(x)
        if self.fail:
            raise RuntimeError("out of memory (injected)")
        return h


def test_a_forward_that_raises_leaves_no_output_kept():
    model = Fails()
    watch = ModuleWatch(model, ["a"])
    model(torch.randn(2, 4))
    watch.take_list(CPU)
    model.fail = True
    with pytest.raises(RuntimeError, match="injected"):
        model(torch.randn(2, 4))
    if ALWAYS_CALL:  # the root's hook ran although the forward raised: an OOM retry starts with nothing kept
        assert not watch._kept
    model.fail = False
    model(torch.randn(2, 4))  # on a torch without always_call hooks, this forward's pre-hook settles
    assert not watch._kept
    names, values = watch.take_list(CPU)
    assert names == ["a", "a"] and all(v is not None and torch.isfinite(v) for v in values)


def test_a_failed_batched_reduction_keeps_the_outputs_and_the_next_take_measures_them(monkeypatch):
    torch.manual_seed(0)
    model = MLP()
    watch = ModuleWatch(model, auto_watch(model))
    model(batch(0)[0])
    watch.take_list(CPU)
    real = stats.foreach_norms

    def broken(*a, **k):
        raise RuntimeError("norm failed (injected)")
    monkeypatch.setattr(stats, "foreach_norms", broken)
    x, _ = batch(1)
    seen = outputs_of(model, watch.names, lambda: pytest.raises(RuntimeError, model, x) if BATCHES else model(x))
    monkeypatch.setattr(stats, "foreach_norms", real)
    _, values = watch.take_list(CPU)
    assert [float(v) for v in values] == [max_abs(o) for _, o in seen]


def test_a_nan_output_reads_non_finite_and_an_inf_one_too():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    watch = ModuleWatch(model, ["0", "1"])
    for _ in range(2):  # the probe's step and a batched one
        with torch.no_grad():
            model[1].bias[0] = float("inf")
        model(torch.randn(2, 4))
        _, values = watch.take_list(CPU)
        assert torch.isfinite(values[0]) and not torch.isfinite(values[1])
        with torch.no_grad():
            model[0].weight[0, 0] = float("nan")
        model(torch.randn(2, 4))
        _, values = watch.take_list(CPU)
        assert not torch.isfinite(values[0]) and not torch.isfinite(values[1])
        with torch.no_grad():
            model[0].weight[0, 0] = 0.0
            model[1].bias[0] = 0.0


def test_a_dataparallel_replicas_forward_is_not_recorded_and_the_originals_is():
    # prevents: nn.DataParallel's per-GPU replicas, which share the original's hooks, calling the guard's
    # hooks from their threads with tensors on other GPUs (the HF Trainer on 2 GPUs crashed adding the
    # replicas' losses; the watch would have batched outputs of several devices)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    watch = ModuleWatch(model, ["0", "2"])
    replica = model._replicate_for_data_parallel()  # as torch.nn.parallel.replicate makes them
    replica._modules = {k: m._replicate_for_data_parallel() for k, m in model._modules.items()}
    for k in ("0", "2"):
        for p in ("weight", "bias"):
            setattr(replica._modules[k], p, getattr(model._modules[k], p) * 1.0)
    x = torch.randn(3, 4)
    replica(x)
    assert watch.take_list(CPU)[0] == []
    seen = outputs_of(model, ["0", "2"], lambda: model(x))
    names, values = watch.take_list(CPU)
    assert names == ["0", "2"] and [float(v) for v in values] == [max_abs(o) for _, o in seen]


@dataclasses.dataclass
class EncoderOutput:
    hidden: torch.Tensor


class DataclassEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return EncoderOutput(self.lin(x))


class Router(nn.Module):
    """A mixture-of-experts router: the chosen experts' indices first, then their weights."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(4, 4)

    def forward(self, h):
        weights = self.gate(h).softmax(-1)
        return weights.argmax(-1), weights


class Routed(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.router, self.head = DataclassEncoder(), Router(), nn.Linear(4, 1)

    def forward(self, x):
        h = self.enc(x).hidden
        _, w = self.router(h)
        return self.head(h * w)


def test_outputs_that_are_dataclasses_or_lead_with_integer_indices_are_watched_and_a_nan_named_there():
    # Prevents: a module returning a dataclass, or a router returning (indices, weights), never
    # watched, so a NaN born there was charged to the next module.
    model = Routed()
    watch = ModuleWatch(model, ["enc", "router", "head"])
    model(torch.randn(2, 4))
    names, values = watch.take_list(CPU)
    assert names == ["enc", "router", "head"] and all(torch.isfinite(v) for v in values)
    with torch.no_grad():
        model.enc.lin.weight[0, 0] = float("nan")
    model(torch.randn(2, 4))
    names, values = watch.take_list(CPU)
    assert stats.first_non_finite(names, [bool(torch.isfinite(v)) for v in values]) == "'enc'"
