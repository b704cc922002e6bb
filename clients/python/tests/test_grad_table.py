"""The gradient address table's kernel (trainguard.grad_table), checked on the CPU under Triton's
interpreter: each parameter group's sum of squares equals torch's, across chunk boundaries, mixed
dtypes and groups, a missing gradient and a NaN; gradients that move are followed; a gradient that
is not one dense block, a resized parameter and a replaced one are refused;
the clip divides float32 gradients in place only on a clipped step that is not skipped; loose
float32 scalars (the loss, module statistics) are read by address, and other scalars refused.
The CUDA graph around it is checked on a GPU (bench/gpu/checks/test_gate_graph.py)."""
import functools
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.torch2

CHECK = r'''
import json, torch
from trainguard import grad_table as gt
gt.CHUNK, gt.BLOCK = 4096, 512  # small chunks: several per gradient
torch.manual_seed(0)
fp32 = [torch.nn.Parameter(torch.randn(n)) for n in (10, 5000, 1, 9000)]
low = [torch.nn.Parameter(torch.randn(n).to(dt)) for n, dt in ((7, torch.bfloat16), (4100, torch.float16))]
for p in fp32 + low:
    p.grad = torch.randn_like(p)
fp32[2].grad = None
opt = torch.optim.SGD([{"params": fp32}, {"params": low + [torch.nn.Parameter(torch.randn(3, 3))]}], lr=0.1)
opt.param_groups[1]["params"][-1].grad = torch.ones(3, 3)
table = gt.GradTable(opt, torch.device("cpu"))
out = {"uploaded": table.upload(), "sums": [float(s) for s in table.sums()]}
out["torch"] = [sum(float((p.grad.double() ** 2).sum()) for p in g["params"] if p.grad is not None) for g in opt.param_groups]
table32 = gt.GradTable(torch.optim.SGD(fp32, lr=0.1), torch.device("cpu"))  # fp32[2] has no gradient
out["float32_only"] = [table.float32_only, table32.float32_only]
table32.upload()
grads = [p.grad for p in fp32 if p.grad is not None]
before = [t.clone() for t in grads]
def divided(found, divisor):
    table32.divide(torch.tensor(found), torch.tensor(divisor))
    return all(torch.equal(t, b / divisor) for t, b in zip(grads, before))
out["skipped_untouched"] = not divided(1.0, 3.0) and all(torch.equal(t, b) for t, b in zip(grads, before))
out["unclipped_untouched"] = divided(0.0, 1.0)
out["clipped_divided"] = divided(0.0, 3.0)
for t, b in zip(grads, before):
    t.copy_(b)
try:
    table.divide(torch.tensor(0.0), torch.tensor(3.0))
    out["mixed_refused"] = False
except ValueError:
    out["mixed_refused"] = True
# every gradient present (the usual step): the table follows gradients that move, copies nothing
# while they stay, and refuses a resized parameter; a replaced parameter no longer matches
dense = [torch.nn.Parameter(torch.randn(n)) for n in (10, 5000, 9000)]
opt_d = torch.optim.SGD(dense, lr=0.1)
for p in dense:
    p.grad = torch.randn_like(p)
td = gt.GradTable(opt_d, torch.device("cpu"))
sums = lambda: float(td.sums()[0])
want = lambda: sum(float((p.grad.double() ** 2).sum()) for p in dense)
out["dense"] = [td.upload(), td.copies, abs(sums() - want()) <= 1e-4 * want()]
out["dense_again"] = [td.upload(), td.copies]                # same addresses: no copy
for p in dense:
    p.grad = torch.randn_like(p) * 2                         # new tensors, as after zero_grad(set_to_none=True)
out["dense_moved"] = [td.upload(), td.copies, abs(sums() - want()) <= 1e-4 * want()]
td_scalars = gt.GradTable(opt_d, torch.device("cpu"))  # before the resize below
dense[1].data = torch.randn(6000)
dense[1].grad = torch.randn(6000)
out["resized_uploaded"] = td.upload()
out["matches"] = td.matches(opt_d)
opt_d.param_groups[0]["params"][2] = torch.nn.Parameter(torch.randn(9000))
out["replaced_matches"] = td.matches(opt_d)
fp32[1].grad[4097] = float("nan")
table.upload()
out["with_nan"] = [float(s) for s in table.sums()]
fp32[3].grad = torch.randn(9000, 2)[:, 0]  # a strided view: not one dense block
out["strided_uploaded"] = table.upload()
# loose scalars read by address: a 0-d loss, module statistics (one NaN), a 1-element view
loss, stats = torch.tensor(2.5), [torch.tensor(float(i)) for i in range(20)] + [torch.tensor(float("nan"))]
view = torch.arange(5, dtype=torch.float32)[3:4]
into = torch.full((24,), -1.0)
td = td_scalars
dense[1].data, dense[1].grad = torch.randn(5000), torch.randn(5000)
out["scalars_uploaded"] = td.upload([loss] + stats + [view])
td.gather(into, 23)
out["gathered"] = [x if x == x else "nan" for x in into.tolist()]
out["refused_scalars"] = [td.upload([torch.tensor(1.0, dtype=torch.bfloat16)]), td.upload([torch.ones(2)]),
                          td.upload([1.0]), td.upload([torch.tensor(0.0)] * (gt.SCALARS + 1))]
vouched = torch.full((22,), -1.0)  # scalars the caller vouches for (GateGraphs): read the same, unchecked
out["vouched_uploaded"] = td.upload([loss] + stats, checked=True)
td.gather(vouched, 22)
out["vouched"] = [x if x == x else "nan" for x in vouched.tolist()]
print(json.dumps(out))
'''


@functools.lru_cache(maxsize=1)
def run_check():
    # torch's Linux wheels from PyPI bring Triton (the venv's stack); torch 1.13 has neither (torch2 marker)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_table_sums_match_torch_and_refuse_strided_gradients():
    out = run_check()
    assert out["uploaded"] is True
    for got, want in zip(out["sums"], out["torch"]):
        assert abs(got - want) <= 1e-4 * want
    assert out["with_nan"][0] != out["with_nan"][0]  # NaN propagates into its group's sum
    assert out["with_nan"][1] == pytest.approx(out["torch"][1], rel=1e-4)  # and not into the other group
    assert out["strided_uploaded"] is False


def test_table_follows_moved_gradients_and_refuses_resized_or_replaced_parameters():
    out = run_check()
    assert out["dense"] == [True, 1, True]
    assert out["dense_again"] == [True, 1]         # nothing copied while the gradients stay put
    assert out["dense_moved"] == [True, 2, True]   # moved: copied once more, and the sums follow
    assert out["resized_uploaded"] is False
    assert out["matches"] is True and out["replaced_matches"] is False


def test_table_divides_the_gradients_only_on_a_clipped_step_that_is_not_skipped():
    out = run_check()
    assert out["skipped_untouched"] and out["unclipped_untouched"]
    assert out["clipped_divided"]  # across chunk boundaries, by a divisor that is not a power of two
    # only an all-float32 table stands in for a fused optimizer's grad_scale (GateGraphs)
    assert out["float32_only"] == [False, True] and out["mixed_refused"]


def test_table_reads_loose_float32_scalars_by_address_and_refuses_others():
    out = run_check()
    assert out["scalars_uploaded"] is True
    # the loss, then the statistics in order (the NaN kept), then the view's element; the rest untouched
    assert out["gathered"] == [2.5] + [float(i) for i in range(20)] + ["nan", 3.0, -1.0]
    # a bf16 scalar, a 2-element tensor, a number, more scalars than the table holds
    assert out["refused_scalars"] == [False, False, False, False]
    assert out["vouched_uploaded"] is True and out["vouched"] == out["gathered"][:22]
