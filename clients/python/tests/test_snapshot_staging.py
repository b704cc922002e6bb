"""The snapshot's device staging (trainguard.snapshot_staging) on the CPU: the flat layout
round-trips mixed dtypes, 0-d and non-contiguous tensors exactly through one transfer per dtype,
its finiteness flag sees a NaN anywhere, a state of other shapes does not fit, and "auto" never
stages off CUDA. The CUDA path (training stream, side stream, restore) is checked on the GPU:
bench/gpu/checks/test_snapshot_staging.py."""
from types import SimpleNamespace

import pytest
import torch

from trainguard import snapshot_staging as st
from trainguard.snapshot import SnapshotPolicy, _fit


def _state():
    torch.manual_seed(0)
    return [torch.randn(3, 4), torch.randn(5).to(torch.bfloat16), torch.tensor(7, dtype=torch.int64),
            torch.randn(6, 2).t(),  # not contiguous
            torch.tensor(2.5), torch.randint(0, 9, (4,))]


def test_staging_round_trips_mixed_dtypes_exactly_with_one_buffer_per_dtype():
    state = _state()
    staging = st.DeviceStaging(state, torch.device("cpu"))
    host, flats, placement = st.slot_buffers(state, staging, st.placement(state, torch.device("cpu")), pin=False)
    assert placement == (True,) * len(state)
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
    # the staging is kept for a state with its signature (StagingChoice.for_state compares them)
    assert st.signature(_state()) == staging.signature
    assert st.signature(_state()[:-1]) != staging.signature
    grown = _state()
    grown[0] = torch.randn(4, 4)
    assert st.signature(grown) != staging.signature


def test_a_slot_laid_out_for_another_placement_or_way_does_not_fit():
    # prevents: a slot whose flat buffers were laid out while a step count lived on the CPU being
    # reused after it moved to the device (a checkpoint loaded with map_location): the copy out
    # would not fit its buffers
    state = _state()
    staging = st.DeviceStaging(state, torch.device("cpu"))
    other = SimpleNamespace(serial=-1)  # a layout these buffers were not found to fit before: checked in full
    buffers = st.slot_buffers(state, staging, st.placement(state, torch.device("cpu")), pin=False) + (None,)
    assert _fit(buffers, other, state, (True,) * len(state))
    assert not _fit(buffers, other, state, (True,) * (len(state) - 1) + (False,))
    assert not _fit(buffers, other, state, None)  # laid out for the device copy, asked for the direct one
    direct = st.slot_buffers(state, None, None, pin=False) + (None,)
    assert _fit(direct, other, state, None) and not _fit(direct, other, state, (True,) * len(state))
    assert not _fit(None, other, state, None)
    # buffers found to fit a layout fit it again without a look at its tensors (a take's fast path)
    assert _fit(direct[:3] + (7,), SimpleNamespace(serial=7), [], (True,))


def test_auto_staging_is_for_cuda_only_and_the_policy_refuses_other_values():
    assert not st.wanted(SnapshotPolicy(), torch.device("cpu"), 10)
    assert not st.wanted(SnapshotPolicy(device_staging=True), torch.device("cpu"), 10)
    assert st.StagingChoice(SnapshotPolicy(device_staging=True), torch.device("cpu")).for_state(_state()) is None
    for bad in ("sometimes", 0, 1, None):  # 0 == False in Python: a config's 0 must not mean "auto"
        with pytest.raises(ValueError, match="device_staging"):
            SnapshotPolicy(device_staging=bad)
