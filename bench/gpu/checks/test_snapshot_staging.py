"""In-memory snapshots through the device staging (trainguard.snapshot_staging) on a GPU: a
snapshot taken between updates holds exactly the state of that moment although training went on
right after it (the update waits for nothing but the device-side copy), restoring it gives that
state back, a NaN in the weights leaves the snapshot not finite, and the direct copy (staging off)
holds the same state. Fused AdamW keeps its step counts on the GPU; the default (foreach) AdamW
keeps them on the CPU, which the staging copies directly."""
import pytest
import torch

from trainguard.snapshot import SnapshotPolicy, SnapshotStore
from models import MLP, batch


def _train(model, opt, steps, start=0, store=None):
    for step in range(start, start + steps):
        x, y = (t.cuda() for t in batch(step))
        torch.nn.functional.mse_loss(model(x), y).backward()
        if store is not None:
            store.before_update()  # the direct copy's contract (Recovery calls it before every update)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _state(model, opt):
    return ([t.detach().cpu().clone() for t in model.state_dict().values()],
            [v.detach().cpu().clone() for s in opt.state.values() for v in s.values() if torch.is_tensor(v)])


def _assert_equal(a, b):
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        assert torch.equal(x, y)
    assert len(a[0]) == len(b[0]) and len(a[1]) == len(b[1])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("staging", [True, False])
def test_a_snapshot_holds_the_state_of_its_moment_and_restores_it(staging, fused):
    torch.manual_seed(0)
    model = MLP().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(device_staging=staging, max_overhead=0))
    _train(model, opt, 3)
    store.prepare()
    want = _state(model, opt)
    s = store.take(0, step=3, data_position=3)
    _train(model, opt, 4, start=3, store=store)  # no host wait: the copy must have read the state before these updates
    assert (store.stats["device_staging_bytes"] > 0) == staging
    torch.cuda.synchronize()
    assert s.ready() and s.finite()
    assert not all(torch.equal(x, y) for x, y in zip(want[0], _state(model, opt)[0]))  # training moved on
    store.restore(s)
    _assert_equal(_state(model, opt), want)
    _train(model, opt, 1, start=3, store=store)  # the restored optimizer steps


@pytest.mark.parametrize("staging", [True, False])
def test_a_snapshot_of_non_finite_weights_is_not_finite(staging):
    model = MLP().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(device_staging=staging, max_overhead=0))
    _train(model, opt, 2)
    store.prepare()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    s = store.take(1, step=2, data_position=2)
    torch.cuda.synchronize()
    assert s.ready() and not s.finite()


def test_step_counts_that_move_to_the_gpu_get_slots_laid_out_afresh():
    # a checkpoint loaded with map_location=<the GPU> puts a foreach AdamW's step counts on the GPU:
    # the slots' flat buffers, laid out while they were on the CPU, no longer fit the copy
    torch.manual_seed(0)
    model = MLP().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(device_staging=True, max_overhead=0))
    _train(model, opt, 2, store=store)
    store.prepare()
    store.take(0, step=2, data_position=2)
    for st in opt.state.values():
        st["step"] = st["step"].cuda()
    want = _state(model, opt)
    s = store.take(1, step=2, data_position=2)
    _train(model, opt, 2, start=2, store=store)
    torch.cuda.synchronize()
    assert s.ready() and s.finite()
    store.restore(s)
    _assert_equal(_state(model, opt), want)


def test_a_store_given_a_bare_cuda_device_copies_the_state_on_the_device():
    # a bare "cuda" (no index) made every tensor count as on another device: copied to the host at
    # once, with a host wait of the whole copy (55 ms for GPT-2 small, bench/gpu/snapshot_take_probe.py)
    torch.manual_seed(0)
    model = MLP().cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    _train(model, opt, 2)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(max_overhead=0), device=torch.device("cuda"))
    assert store.device == torch.device("cuda", torch.cuda.current_device())
    store.prepare()
    want = _state(model, opt)
    s = store.take(0, step=2, data_position=2)
    assert store.stats["device_staging_bytes"] == sum(t.numel() * t.element_size() for t in want[0] + want[1])
    _train(model, opt, 2, start=2, store=store)
    torch.cuda.synchronize()
    store.restore(s)
    _assert_equal(_state(model, opt), want)
