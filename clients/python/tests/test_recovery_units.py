"""Recovery pieces against plain torch objects, no sidecar: in-memory snapshots,
fault classification and the replay budget (the ring and its pace: test_snapshot_ring.py; LR cuts:
test_lr_cuts.py; the loops against the real sidecar are in test_recovery.py)."""
import copy
import gc
import random
import weakref

import pytest
import torch

from trainguard import snapshot_layout
from trainguard.replay import FaultClass, ReplayBudget, ReplayPolicy, StepFault, classify
from trainguard.snapshot import SnapshotPolicy, SnapshotStore
from trainguard.snapshot_schedule import SnapshotRing
from models import fit_plain, make


def _state(model, opt):
    return ({k: (v.clone() if torch.is_tensor(v) else v) for k, v in model.state_dict().items()},
            {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()})


# ---------------------------------------------------------------------------------- snapshots

def test_restore_snapshot_after_more_steps_returns_exact_state_and_continues_identically():
    # prevents: a snapshot that shares storage with the live tensors (later steps would change it)
    # or misses optimizer/scheduler/RNG state (the resumed run would drift from the original)
    model, opt = make()
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, gamma=0.5)
    store = SnapshotStore(model, opt, scheduler=sched, policy=SnapshotPolicy(interval=1, max_overhead=0))
    fit_plain(model, opt, 5, sched=sched)
    torch.manual_seed(123)
    random.seed(7)
    s = store.take(0, step=4, data_position=5)
    assert s.ready() and s.finite()
    w5, _ = _state(model, opt)
    fit_plain(model, opt, 9, start=5, sched=sched)
    ref = _state(model, opt)[0]
    r_py = random.random()
    store.restore(s)
    assert all(torch.equal(w5[k], v) for k, v in model.state_dict().items())
    assert sched.last_epoch == 5 and random.random() == r_py
    fit_plain(model, opt, 9, start=5, sched=sched)  # the same steps again: dropout draws the same masks
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())


def test_restore_twice_from_the_same_snapshot_gives_the_same_state():
    # prevents: restore handing the snapshot's own buffers to the optimizer (the next steps would
    # overwrite the snapshot, and a second rollback would restore garbage)
    model, opt = make()
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(interval=1, max_overhead=0))
    fit_plain(model, opt, 3)
    s = store.take(0, 2, 3)
    store.restore(s)
    fit_plain(model, opt, 8, start=3)
    first = _state(model, opt)[0]
    store.restore(s)
    fit_plain(model, opt, 8, start=3)
    assert all(torch.equal(first[k], v) for k, v in model.state_dict().items())


class _Counted(torch.nn.Linear):
    """A module whose state dict holds a non-tensor value beside its tensors (extra state)."""

    def __init__(self):
        super().__init__(4, 4)
        self.seen = 0
        self.kept = {}

    def get_extra_state(self):
        self.kept["seen"] = self.seen
        return self.kept  # the same object each time: a snapshot must hold its value, not it

    def set_extra_state(self, state):
        self.seen = state["seen"]


class _Serialised(torch.nn.Linear):
    """A module whose extra state is a tensor it builds anew at each call (as TransformerEngine's)."""

    def __init__(self):
        super().__init__(4, 4)
        self.amax = 1.0

    def get_extra_state(self):
        return torch.tensor([self.amax])

    def set_extra_state(self, state):
        self.amax = float(state[0])


def test_a_snapshot_restores_extra_state_and_parameters_the_optimizer_holds_beside_the_model():
    # prevents: the walk that takes an all-tensor dict in one run dropping a mixed dict's other
    # values, and the state-dict shortcut for "no parameter outside the model" missing one that is
    model = torch.nn.Sequential(_Counted(), _Serialised(), torch.nn.Linear(4, 1))
    temperature = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.AdamW([{"params": model.parameters()}, {"params": [temperature], "lr": 0.1}], lr=0.01)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(interval=1, max_overhead=0))

    def fit(steps):
        for i in range(steps):
            x = torch.randn(8, 4, generator=torch.Generator().manual_seed(i))
            (model(x).pow(2).mean() * temperature).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            model[0].seen += 1
            model[1].amax *= 2

    fit(3)
    store.take(0, 2, 3)  # lays the state out
    fit(2)
    s = store.take(1, 4, 5)  # the kept layout
    w, o = _state(model, opt)
    t, seen, amax = temperature.detach().clone(), model[0].seen, model[1].amax
    fit(4)
    assert not torch.equal(temperature.detach(), t) and model[0].seen == seen + 4
    store.restore(s)
    assert model[0].seen == seen and model[1].amax == amax
    assert torch.equal(temperature.detach(), t)
    assert all(torch.equal(w[k], v) for k, v in model.state_dict().items() if torch.is_tensor(v))
    now = _state(model, opt)[1]
    assert all(torch.equal(now[id(p)][k], v) if torch.is_tensor(v) else now[id(p)][k] == v
               for p in [temperature, *model.parameters()] for k, v in o[id(p)].items())


def test_tied_weights_are_copied_once():
    # prevents: a snapshot of tied weights (embeddings shared with the output layer) paying for
    # and restoring the same storage twice
    model, opt = make()
    model.extra1, model.extra2 = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
    model.extra2.weight = model.extra1.weight
    store = SnapshotStore(model, opt)
    layout, uniq, _ = store._gather()
    assert len(layout.remap) == len(uniq) + 1
    s = store.take(0, 0, 1)  # its registration's size: what its buffers hold, the shared storage once
    assert s.nbytes == sum(h.numel() * h.element_size() for h in s.host) == sum(t.numel() * t.element_size() for t in uniq)


def test_a_take_lays_the_state_out_afresh_only_when_its_tensors_change():
    # prevents: every take redoing the per-tensor work (~2.5 ms for GPT-2 small), or a take that
    # reuses the last layout after a parameter moved (p.data = ...), was reshaped, or the optimizer
    # state was replaced, and so copies memory the model no longer uses
    model, opt = make()
    fit_plain(model, opt, 2)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(max_overhead=0))
    store.take(0, 1, 2)
    first = store._layout
    want = [t.detach().clone() for t in model.state_dict().values()]
    s = store.take(1, 2, 3)
    # the same tensors over the same memory (a torch without the one-call address check lays the
    # state out at every take)
    assert (store._layout is first) == snapshot_layout.REUSES_LAYOUTS
    fit_plain(model, opt, 3, start=2)
    store.restore(s)                                       # what the reused layout copied is the state
    assert all(torch.equal(a, b) for a, b in zip(want, model.state_dict().values()))
    w = model.inp.weight
    w.data = torch.full_like(w, 0.5)                       # moved: new memory, the same Parameter
    s = store.take(0, 3, 4)
    assert store._layout is not first
    with torch.no_grad():
        w.zero_()
    store.restore(s)
    assert bool((w == 0.5).all())                          # the snapshot held the new memory's values
    moved = store._layout
    w.data = w.data.reshape(-1).reshape(w.shape[1], w.shape[0])  # the same memory, another shape
    store.take(1, 4, 5)
    assert store._layout is not moved
    reshaped = store._layout
    m = opt.state[w]["exp_avg"]
    m.data = m.data.view(torch.int32)                      # the same memory and shape, another dtype
    store.take(1, 4, 5)
    assert store._layout is not reshaped
    m.data = m.data.view(torch.float32)
    store.take(1, 4, 5)
    reshaped = store._layout
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # the optimizer's state replaced by copies
    store.take(0, 5, 6)
    assert store._layout is not reshaped


def test_a_kept_layout_does_not_keep_a_replaced_state_alive():
    # prevents: the optimizer state a checkpoint load replaced staying in (device) memory until the
    # next snapshot, held by the layout kept for it
    model, opt = make()
    fit_plain(model, opt, 2)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(max_overhead=0))
    store.take(0, 1, 2)
    old = weakref.ref(next(iter(opt.state.values()))["exp_avg"])
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    gc.collect()
    assert old() is None


def test_snapshot_above_max_bytes_is_not_taken():
    # prevents: a snapshot silently using more host memory than the policy allows
    model, opt = make()
    fit_plain(model, opt, 1)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(max_bytes=1000))
    assert store.take(0, 0, 1) is None and store.too_big > 1000


def test_a_store_takes_its_device_by_name():
    # prevents: a store given its device as a name comparing each tensor's device with a string
    # (on CUDA a bare "cuda" made every tensor "elsewhere": copied with a host wait)
    model, opt = make()
    fit_plain(model, opt, 1)
    store = SnapshotStore(model, opt, device="cpu", policy=SnapshotPolicy(max_overhead=0))
    assert store.device == torch.device("cpu")
    want = [p.detach().clone() for p in model.parameters()]
    s = store.take(0, 1, 2)
    fit_plain(model, opt, 2, start=1)
    store.restore(s)
    assert s.finite() and all(torch.equal(a, b) for a, b in zip(want, model.parameters()))


def test_snapshot_of_nonfinite_weights_is_never_known_good():
    # prevents: promoting a snapshot whose weights already hold a NaN
    model, opt = make()
    fit_plain(model, opt, 2)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(interval=1, max_overhead=0))
    ring = SnapshotRing(store, known_good_steps=2)
    with torch.no_grad():
        model.inp.weight[0, 0] = float("nan")
    store.take(0, 1, 2)
    assert not store.slots[0].finite()
    assert ring.on_healthy(2) == [] and ring.on_healthy(3) == []


def test_first_snapshot_allocates_every_slot():
    # prevents: pinning the second slot's host memory mid-run (a ~1 s/GB stall at the 2nd snapshot)
    model, opt = make()
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(interval=1, max_overhead=0))
    fit_plain(model, opt, 1)
    store.take(0, 0, 1)
    assert all(s.host is not None for s in store.slots)
    hosts = [id(h) for h in store.slots[1].host]
    store.take(1, 1, 2)
    assert [id(h) for h in store.slots[1].host] == hosts  # reused, not allocated again


def test_buffers_sized_after_the_first_update_serve_every_later_snapshot():
    # prevents: the first snapshot with optimizer state (Adam's moments appear at the first update)
    # pinning two slots' worth of host memory in the middle of the run
    model, _ = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    store = SnapshotStore(model, opt, policy=SnapshotPolicy(interval=1, max_overhead=0))
    store.take(0, -1, 0)                 # the starting state: no optimizer state yet
    fit_plain(model, opt, 1)
    store.prepare()                       # what Recovery does after the first update
    alloc = store.stats["alloc_s"]
    for slot, step in ((1, 1), (0, 2), (1, 3)):
        fit_plain(model, opt, 1, start=step)
        store.take(slot, step, step + 1)
    assert store.stats["alloc_s"] == alloc
    assert len(store.slots[0].host) > 2   # weights and Adam's moments


# ---------------------------------------------------------------------------------- replay

def test_classify_clean_replay_is_transient_same_fault_deterministic_other_fault_unstable():
    # prevents: mixing up the three classes the rollback plan depends on
    nan_mod = StepFault(float("nan"), float("nan"), module="blocks.1")
    assert classify(nan_mod, StepFault(0.5, 1.0)) == FaultClass.TRANSIENT
    assert classify(nan_mod, StepFault(float("nan"), float("nan"), module="blocks.1")) == FaultClass.DETERMINISTIC
    assert classify(nan_mod, StepFault(float("nan"), float("nan"), module="blocks.0")) == FaultClass.UNSTABLE
    assert classify(nan_mod, StepFault(9e9, 1e9, spike=True)) == FaultClass.UNSTABLE
    spike = StepFault(100.0, 50.0, spike=True)
    assert classify(spike, StepFault(100.2, 50.1, spike=True)) == FaultClass.DETERMINISTIC
    assert classify(spike, StepFault(300.0, 50.1, spike=True)) == FaultClass.UNSTABLE


def test_replay_budget_allows_at_most_n_per_window():
    # prevents: a flaky device or a run of bad batches doubling the cost of every step
    b = ReplayBudget(ReplayPolicy(max_replays=2, window_steps=10))
    got = []
    for step in range(25):
        if b.allow(step):
            b.spend(step)
            got.append(step)
    assert got == [0, 1, 10, 11, 20, 21] and b.refused == 19


def test_replay_policy_modes():
    # prevents: replaying spikes when the policy says non-finite only, or anything when off
    nf, sp = StepFault(float("nan"), 1.0), StepFault(5.0, 1.0, spike=True)
    assert ReplayBudget(ReplayPolicy(mode="nonfinite")).wants(nf)
    assert not ReplayBudget(ReplayPolicy(mode="nonfinite")).wants(sp)
    assert ReplayBudget(ReplayPolicy(mode="both")).wants(sp)
    assert not ReplayBudget(ReplayPolicy(mode="off")).wants(nf)
    with pytest.raises(ValueError):
        ReplayPolicy(mode="always")


def test_a_fault_judged_without_a_loss_is_described_as_loss_absent_not_zero():
    # prevents: "non-finite (loss=0.0, grad norm=nan)" for a step whose loss was never given (the wrapper alone)
    from trainguard.replay import StepFault
    assert "loss=absent" in StepFault(0.0, float("nan"), loss_absent=True).describe()
    assert "loss=0.0" in StepFault(0.0, float("nan")).describe()
