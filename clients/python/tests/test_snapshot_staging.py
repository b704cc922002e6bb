"""The snapshot's device staging (trainguard.snapshot_staging) on the CPU: the flat layout
round-trips mixed dtypes, 0-d and non-contiguous tensors exactly through one transfer per dtype,
its finiteness flag sees a NaN anywhere, a state of other shapes does not fit, and "auto" never
stages off CUDA. The CUDA path (training stream, side stream, restore) is checked on the GPU:
bench/gpu/checks/test_snapshot_staging.py."""
import pytest
import torch

from trainguard import snapshot_staging as st
from trainguard.snapshot import SnapshotPolicy


def _state():
    torch.manual_seed(0)
    return [torch.randn(3, 4), torch.randn(5).to(torch.bfloat16), torch.tensor(7, dtype=torch.int64),
            torch.randn(6, 2).t(),  # not contiguous
            torch.tensor(2.5), torch.randint(0, 9, (4,))]


def test_staging_round_trips_mixed_dtypes_exactly_with_one_buffer_per_dtype():
    state = _state()
    staging = st.DeviceStaging(state, torch.device("cpu"))
    host, flats = st.slot_buffers(state, torch.device("cpu"), staging, pin=False)
    assert sorted(map(str, flats)) == ["torch.bfloat16", "torch.float32", "torch.int64"]
    staging.copy_in(state)
    staging.copy_out(flats)
    for h, t in zip(host, state):
        assert h.dtype == t.dtype and h.shape == t.shape and torch.equal(h, t)
    # the slot's tensors are views of its flat buffers: refreshing those refreshes them
    state[0].add_(1.0)
    staging.copy_in(state)
    staging.copy_out(flats)
    assert torch.equal(host[0], state[0])
    assert staging.nbytes == sum(t.numel() * t.element_size() for t in state)


def test_staging_flags_a_nan_anywhere_and_refuses_other_shapes():
    state = _state()
    staging = st.DeviceStaging(state, torch.device("cpu"))
    staging.copy_in(state)
    assert bool(staging.finite_flag())
    state[1][3] = float("nan")  # in the bf16 buffer
    staging.copy_in(state)
    assert not bool(staging.finite_flag())
    assert staging.fits(_state())
    assert not staging.fits(_state()[:-1])
    grown = _state()
    grown[0] = torch.randn(4, 4)
    assert not staging.fits(grown)


def test_auto_staging_is_for_cuda_only_and_the_policy_refuses_other_values():
    assert not st.wanted(SnapshotPolicy(), torch.device("cpu"), 10)
    assert not st.wanted(SnapshotPolicy(device_staging=True), torch.device("cpu"), 10)
    with pytest.raises(ValueError, match="device_staging"):
        SnapshotPolicy(device_staging="sometimes")
