"""ModuleWatch: what each watched module call's statistic is, and when it is taken.

While autograd records, the hooks keep the outputs and one batched max |x| takes their statistics
when the model's forward returns (stats.ModuleWatch); these tests pin that the values are the ones a
per-call reduction in the hook gives, in call order, on every path (grad, no grad, folded calls,
an output changed in place after its hook)."""
import torch
from torch import nn

from trainguard.stats import ModuleWatch, auto_watch
from models import MLP, batch


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


def test_statistics_are_each_calls_max_abs_taken_when_the_forward_returns():
    torch.manual_seed(0)
    model = MLP()
    names = auto_watch(model)
    watch = ModuleWatch(model, names)
    x, _ = batch(0)
    seen = outputs_of(model, names, lambda: model(x))
    assert not watch._kept, "the root module's forward hook takes the kept outputs' statistics"
    got_names, values = watch.take_list(torch.device("cpu"))
    assert got_names == [n for n, _ in seen] == ["inp", "blocks.0", "blocks.1", "out"]
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in values)
    assert [float(v) for v in values] == [max_abs(o) for _, o in seen]


def test_a_forward_without_grad_is_measured_in_its_hooks_and_matches():
    torch.manual_seed(0)
    model = MLP()
    watch = ModuleWatch(model, auto_watch(model))
    x, _ = batch(1)
    with torch.no_grad():
        seen = outputs_of(model, watch.names, lambda: model(x))
    assert not watch._kept
    _, values = watch.take_list(torch.device("cpu"))
    assert [float(v) for v in values] == [max_abs(o) for _, o in seen]


def test_calls_past_max_calls_fold_into_the_last_entry_as_their_max():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin)
    watch = ModuleWatch(model, ["0"])
    n = ModuleWatch.MAX_CALLS + 4
    xs = [torch.randn(3, 4) * (k + 1) for k in range(n)]
    watch.remove()
    outs = [max_abs(lin(x)) for x in xs]  # the same calls, unwatched
    watch.attach()
    for x in xs:
        lin(x)  # called directly: the root's forward never returns, the take settles
    assert len(watch._kept) == ModuleWatch.MAX_CALLS
    names, values = watch.take_list(torch.device("cpu"))
    assert names == ["0"] * ModuleWatch.MAX_CALLS
    expect = outs[:ModuleWatch.MAX_CALLS - 1] + [max(outs[ModuleWatch.MAX_CALLS - 1:])]
    assert [float(v) for v in values] == expect


class InPlaceAfter(nn.Module):
    """``first``'s output is changed in place by the module after it (legal: Linear's backward needs
    its input, not its output)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)

    def forward(self, x):
        h = self.first(x)
        h.mul_(1000.0)
        return self.second(h)


def test_a_module_whose_output_is_changed_in_place_is_measured_in_its_hook_from_then_on():
    torch.manual_seed(0)
    model = InPlaceAfter()
    watch = ModuleWatch(model, ["first", "second"])
    x = torch.randn(5, 4)
    model(x).sum().backward()
    watch.take_list(torch.device("cpu"))
    assert watch._in_hook == {0}  # seen once: its version moved between its hook and the forward's end
    model(x).sum().backward()
    _, values = watch.take_list(torch.device("cpu"))
    with torch.no_grad():
        assert float(values[0]) == max_abs(model.first(x))  # the value its hook saw, not the scaled one
    assert float(values[1]) == max_abs(model(x))


def test_a_nan_output_reads_non_finite_and_an_inf_one_too():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    watch = ModuleWatch(model, ["0", "1"])
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    model(torch.randn(2, 4))
    _, values = watch.take_list(torch.device("cpu"))
    assert torch.isfinite(values[0]) and not torch.isfinite(values[1])
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    model(torch.randn(2, 4))
    _, values = watch.take_list(torch.device("cpu"))
    assert not torch.isfinite(values[0]) and not torch.isfinite(values[1])
