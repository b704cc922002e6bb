"""In-memory known-good snapshots: a recent good training state kept in host memory.

A snapshot holds everything a rollback restores -- weights and buffers, optimizer state,
scheduler, GradScaler, RNG states, the data position and the LR cut in force -- in host buffers
allocated once per slot and refreshed in place. On CUDA the buffers are pinned and the copy to
them is asynchronous, on a side stream, so a healthy step never waits for it: it reads either
device buffers the state was first copied into on the training stream (:mod:`trainguard.snapshot_staging`),
or the live tensors, in which case the next ``optimizer.step()`` waits, on the device, until the
copy has read them. Slots are double-buffered: the slot being written is never a rollback target, and the
newest known-good slot is never the one overwritten (see :class:`trainguard.snapshot_schedule.SnapshotRing`).

torch is needed here (this module is imported by Guard only).
"""
import copy
import time
from dataclasses import dataclass

import torch

from . import schedulers, snapshot_staging
from .rng import capture_rng, restore_rng
from .snapshot_layout import fill, gather, local, outside_params, rebuild
from .tensors import all_finite, copy_tensors

EMPTY, COPYING, PENDING, KNOWN_GOOD = "EMPTY", "COPYING", "PENDING", "KNOWN_GOOD"


@dataclass
class SnapshotPolicy:
    """When and how big. ``interval``: healthy steps between two snapshots (a new one is not taken
    while the previous one still waits to become known-good, so with ``slots=2`` one known-good
    snapshot always survives). ``max_bytes``: 0 = no cap; a state larger than this is not
    snapshotted (warned once). Host memory used: ``slots x`` (weights + buffers + optimizer
    state), e.g. 2 x 16 bytes/parameter for fp32 AdamW; every slot's buffers are allocated at the
    first snapshot (the run's first step), so pinning host memory never stalls a later step.
    ``max_overhead``: snapshots are also spaced in time so that what one measurably costs the steps
    around it (its copy's launch, the next update's wait for the copy) stays below this fraction of
    training time; e.g. a snapshot that costs 12 ms is taken at most every 2.4 s at 0.005. 0 = the
    step interval alone decides."""
    enabled: bool = True
    interval: int = 25
    max_bytes: int = 0
    slots: int = 2
    pin_memory: bool = True
    max_overhead: float = 0.005
    #: copy the state on the device first and to the host from there (snapshot_staging): "auto"
    #: (while the state is at most a quarter of the free device memory), True, False
    device_staging: object = "auto"

    def __post_init__(self):
        if self.interval < 1:
            raise ValueError("snapshot interval must be >= 1 healthy step")
        if not 0.0 <= self.max_overhead < 1.0:
            raise ValueError("snapshot max_overhead must be in [0, 1): the fraction of training time snapshots "
                             "may cost (0 = the step interval alone decides)")
        if self.slots < 2:
            raise ValueError("snapshots need at least 2 slots (one known-good while the next is written)")
        if self.max_bytes < 0:
            raise ValueError("snapshot max_bytes must be >= 0 (0 = no cap)")
        if not (self.device_staging == "auto" or isinstance(self.device_staging, bool)):
            raise ValueError('snapshot device_staging must be "auto", True or False')


def _fit(buffers, layout, uniq, placement):
    """Whether a slot's (host, flats, placement, layout serial) buffers can hold these tensors (same
    count, shapes and dtypes), laid out for how they are copied (``placement`` None: each directly).
    Buffers last found to fit this very layout fit it still: no loop over the tensors at each take."""
    if buffers is None or buffers[0] is None:
        return False
    if buffers[3] == layout.serial:
        return True
    if len(buffers[0]) != len(uniq) or buffers[2] != placement:
        return False
    return all(h.shape == u.shape and h.dtype == u.dtype for h, u in zip(buffers[0], uniq))


def _indexed(device):
    """``cuda`` as ``cuda:<current device>``: tensors name their device with its index, and each
    snapshot compares them with this one to choose how it copies them (a tensor on another device
    is copied at once, with a host wait: given a bare ``cuda``, a take blocked for the whole
    device-to-host copy, 55 ms for GPT-2 small)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Snapshot:
    """One slot. ``host`` buffers are allocated on first use and reused while the shapes hold."""

    def __init__(self, slot):
        self.slot = slot
        self.state = EMPTY
        self.step = -1
        self.data_position = 0
        self.lr_scale = 1.0
        self.healthy_since = 0
        self.checkpoint_id = ""
        self.host = None         # one host tensor per state tensor (views into ``flats`` when staged)
        self.flats = None        # {dtype: flat pinned buffer} when the copy goes through DeviceStaging
        self.placement = None    # which tensors the flats hold (snapshot_staging.placement), when staged
        self.laid_for = None     # the serial of the StateLayout these buffers were last found to fit
        self.spare = None        # (host, flats, placement, serial) allocated ahead for the next snapshot (prepare())
        self.skeleton = None
        self.finite_flag = None  # host 0-d bool tensor, valid once the copy completed
        self.host_finite = True  # the state's tensors that live on the CPU (checked at the take)
        self.event = None
        self.taken_at = 0.0
        self.nbytes = 0          # the state it holds: set at the take (each registration sends it, once per step)
        self.scheduler_marks = []  # (scheduler, step count) at the take (schedulers.marks)
        self.scheduler_steps = []  # (scheduler, steps the loop made after the take): known at the next step

    @property
    def buffers(self):
        return self.host, self.flats, self.placement, self.laid_for

    def ready(self, wait=False):
        """True once the copy has landed (polls the CUDA event; ``wait``: waits for it)."""
        if self.state == COPYING and wait and self.event is not None:
            self.event.synchronize()
        if self.state == COPYING and (self.event is None or self.event.query()):
            self.state = PENDING
        return self.state in (PENDING, KNOWN_GOOD)

    def finite(self):
        return self.host_finite and (bool(self.finite_flag) if self.finite_flag is not None else True)


class SnapshotStore:
    """Takes and restores snapshots of one rank's training state into ``policy.slots`` slots."""

    def __init__(self, model, optimizer, scheduler=None, scaler=None, policy=None, device=None):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.policy = policy or SnapshotPolicy()
        self.slots = [Snapshot(i) for i in range(self.policy.slots)]
        self.device = _indexed(torch.device(device) if device is not None
                               else next((p.device for p in model.parameters()), torch.device("cpu")))
        self.cuda = self.device.type == "cuda"
        self._stream = torch.cuda.Stream(device=self.device) if self.cuda else None
        self._copy_done = None   # the newest copy's event: optimizer.step() waits on it, on the device
        self._staging = snapshot_staging.StagingChoice(self.policy, self.device)
        self._staged_copy = None  # the last copy out of the staging buffers (a new copy in waits for it)
        self._layout = None       # the last take's StateLayout (snapshot_layout), reused while it holds
        self.too_big = None      # bytes, when the state exceeds policy.max_bytes
        self.stats = {"taken": 0, "restored": 0, "last_take_s": 0.0, "bytes": 0, "device_staging_bytes": 0}

    def forget_layout(self):
        """The state's make-up changed (a scheduler attached later): the next take lays it out afresh."""
        self._layout = None

    # ------------------------------------------------------------------ taking

    def _gather(self):
        """(layout, the live state's unique tensors, the skeleton that puts them back): the layout of
        the last take again while it holds (snapshot_layout)."""
        self._layout, uniq, skeleton = gather(self.model, self.optimizer, self.scheduler, self.scaler, self.device,
                                              self._layout)
        return self._layout, uniq, skeleton

    def take(self, slot, step, data_position, lr_scale=1.0, rng=None):
        """Starts copying the live state into ``slots[slot]``; returns the snapshot, or None when the
        state is larger than ``policy.max_bytes``. On CUDA it returns before the copy has landed."""
        t0 = time.perf_counter()
        s = self.slots[slot]
        layout, uniq, skeleton = self._gather()
        nbytes = layout.nbytes
        if self.policy.max_bytes and nbytes > self.policy.max_bytes:
            self.too_big = nbytes
            return None
        staged = self._staged(layout, uniq)
        laid = self._placement(layout, staged)
        alloc_s = 0.0
        if not _fit(s.buffers, layout, uniq, laid) and _fit(s.spare, layout, uniq, laid):
            (s.host, s.flats, s.placement, s.laid_for), s.spare = s.spare, None
        if not _fit(s.buffers, layout, uniq, laid):
            t_alloc = time.perf_counter()
            # Every free slot at once (normally all of them, at the first snapshot): pinning
            # gigabytes of host memory takes ~1 s/GB, a start-up cost rather than a stall mid-run.
            for other in self.slots:
                if other is s or (other.state == EMPTY and not _fit(other.buffers, layout, uniq, laid)):
                    self._allocate(other, layout, uniq, staged, laid)
            alloc_s = time.perf_counter() - t_alloc
        s.laid_for = layout.serial
        s.state, s.step, s.data_position, s.lr_scale = COPYING, int(step), int(data_position), float(lr_scale)
        s.healthy_since, s.checkpoint_id, s.taken_at, s.nbytes = 0, "", time.time(), nbytes
        s.skeleton = (layout.remap, skeleton, capture_rng() if rng is None else rng)
        s.scheduler_marks, s.scheduler_steps = schedulers.marks(self.scheduler), []
        s.host_finite = True
        if staged is not None:
            self._take_staged(s, layout, uniq, staged)
        elif self.cuda:
            self._take_direct(s, layout, uniq)
        else:
            copy_tensors(s.host, uniq)
            s.finite_flag = all_finite(uniq)
            s.event = None
            s.state = PENDING
        self.stats["taken"] += 1
        self.stats["bytes"] = nbytes
        self.stats["last_take_s"] = time.perf_counter() - t0 - alloc_s
        self.stats["alloc_s"] = self.stats.get("alloc_s", 0.0) + alloc_s
        return s

    def _take_direct(self, s, layout, uniq):
        """Copies the live state straight to the slot's pinned buffers on the side stream (tensors
        on other devices at once); the next update waits for that copy on the device."""
        on_device = [uniq[i] for i in layout.here]
        self._take_host_part(s, layout, uniq)
        main = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(main)  # the copy reads the state optimizer.step() just wrote
        with torch.cuda.stream(self._stream):
            for u in on_device:
                u.record_stream(self._stream)
            copy_tensors([s.host[i] for i in layout.here], on_device, non_blocking=True)
            flag = all_finite(on_device)
            if flag is not None:
                s.finite_flag.copy_(flag, non_blocking=True)
            s.event = torch.cuda.Event()
            s.event.record(self._stream)
        self._copy_done = s.event

    def _take_staged(self, s, layout, uniq, staging):
        """Copies the live state into the staging buffers on the training stream (the next update is
        ordered after it and waits for nothing else), then to the host on the side stream."""
        main = torch.cuda.current_stream(self.device)
        if self._staged_copy is not None and not self._staged_copy.query():
            main.wait_event(self._staged_copy)  # the last copy out still reads the staging buffers
        staging.copy_in([uniq[i] for i in layout.here])
        self._take_host_part(s, layout, uniq)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            staging.copy_out(s.flats)
            flag = staging.finite_flag()
            if flag is not None:
                s.finite_flag.copy_(flag, non_blocking=True)
            s.event = torch.cuda.Event()
            s.event.record(self._stream)
        self._staged_copy = s.event

    def _take_host_part(self, s, layout, uniq):
        """Copies, at once, the state's tensors that are not on this device: a non-fused optimizer's
        CPU step counts, or (model parallel) tensors on another GPU, whose streams the side stream
        and its event do not cover."""
        if not layout.elsewhere:  # a fused optimizer: everything is on the device (take() set host_finite)
            return
        others = [uniq[i] for i in layout.elsewhere]
        copy_tensors([s.host[i] for i in layout.elsewhere], others)
        flag = all_finite(others, on="cpu")
        s.host_finite = flag is None or bool(flag)

    def _staged(self, layout, uniq):
        """The DeviceStaging this state's snapshot goes through, or None (snapshot_staging.StagingChoice,
        asked once per layout: it decides once per state layout anyway)."""
        if "staging" not in layout.memo:
            layout.memo["staging"] = self._staging.for_state(uniq)
        staging = layout.memo["staging"]
        self.stats["device_staging_bytes"] = staging.nbytes if staging is not None else 0
        return staging

    @staticmethod
    def _placement(layout, staged):
        return layout.placement if staged is not None else None

    def prepare(self):
        """Allocates, for every slot, buffers that fit the state as it is now, where its own do not:
        called after the first update, when the optimizer state exists (the starting-state snapshot
        has none), so that no later snapshot pins host memory mid-run. A slot in use gets them as
        spare buffers for its next snapshot. Returns the seconds it took."""
        t0 = time.perf_counter()
        layout, uniq, _ = self._gather()
        if self.policy.max_bytes and layout.nbytes > self.policy.max_bytes:
            return 0.0
        staged = self._staged(layout, uniq)
        laid = self._placement(layout, staged)
        for s in self.slots:
            if _fit(s.buffers, layout, uniq, laid) or _fit(s.spare, layout, uniq, laid):
                continue
            if s.state == EMPTY:
                self._allocate(s, layout, uniq, staged, laid)
            else:
                s.spare = self._buffers(uniq, staged, laid) + (layout.serial,)
        return time.perf_counter() - t0

    def _buffers(self, uniq, staged=None, laid=None):
        return snapshot_staging.slot_buffers(uniq, staged, laid, self.cuda and self.policy.pin_memory)

    def _allocate(self, s, layout, uniq, staged=None, laid=None):
        s.host, s.flats, s.placement = self._buffers(uniq, staged, laid)
        s.laid_for = layout.serial
        s.finite_flag = torch.ones((), dtype=torch.bool, pin_memory=self.cuda and self.policy.pin_memory)

    def before_update(self):
        """Call right before optimizer.step(): on CUDA the main stream waits (on the device, the
        host does not) until the snapshot copy has read the tensors the update will change."""
        if self._copy_done is not None:
            if self._copy_done.query():
                self._copy_done = None
            else:
                torch.cuda.current_stream(self.device).wait_event(self._copy_done)
                self._copy_done = None

    # ------------------------------------------------------------------ restoring

    def restore(self, s, rng=True):
        """Puts the snapshot's state back into the live model, optimizer, scheduler and scaler (the
        same parameter objects, so every reference to them stays valid)."""
        if not s.ready(wait=True):
            raise ValueError(f"snapshot slot {s.slot} holds no complete state (state {s.state})")
        remap, skeleton, rng_state = s.skeleton
        _check_layout(skeleton["optimizer"], self.optimizer)  # before anything is written: no half-restored state
        def host(j):
            return s.host[remap[j]]
        model_sd = fill(skeleton["model"], host)
        with torch.no_grad():
            live = self.model.state_dict(keep_vars=True)  # as the take walked it (outside_params)
            for k, v in model_sd.items():
                if k.endswith(_EXTRA_STATE):  # Python values or a tensor the module builds anew at each call
                    _set_extra_state(self.model, k, v)
                elif k in live and torch.is_tensor(live[k]):
                    local(live[k])[0].copy_(v, non_blocking=False)  # a DTensor: into this rank's shard
            for p, v in zip(outside_params(self.model, self.optimizer, live), fill(skeleton.get("outside") or [], host)):
                local(p)[0].copy_(v, non_blocking=False)
        # Fresh optimizer state (copies on the parameters' devices, DTensors again where they were):
        # the snapshot's own buffers stay intact for a later rollback.
        specs = skeleton["specs"]
        self.optimizer.load_state_dict(fill(skeleton["optimizer"], lambda j: rebuild(host(j), specs[remap[j]])))
        if self.scheduler is not None and skeleton["scheduler"] is not None:
            self.scheduler.load_state_dict(fill(skeleton["scheduler"], host))
            schedulers.step_again(s.scheduler_steps)  # the loop's scheduler.step() after the snapshot's update
        if self.scaler is not None and skeleton["scaler"] is not None:
            sc = fill(skeleton["scaler"], host)
            self.scaler._scale.copy_(sc["scale"])
            self.scaler._growth_tracker.copy_(sc["growth_tracker"])
        if rng:
            restore_rng(rng_state)
        self.stats["restored"] += 1
        return s


# the key suffix torch's state_dict gives a module's get_extra_state() (torch >= 1.10)
_EXTRA_STATE = getattr(torch.nn.modules.module, "_EXTRA_STATE_KEY_SUFFIX", "_extra_state")


def _set_extra_state(model, key, value):
    """A module's extra state (``get_extra_state``: a counter, a quantizer's scales kept as Python
    values) back as the snapshot held it."""
    path = key[:-len(_EXTRA_STATE)].rstrip(".")
    model.get_submodule(path).set_extra_state(copy.deepcopy(value))


def _check_layout(saved, optimizer):
    """A LookupError (the rollback halts with it) when the optimizer's parameter groups are no longer
    the snapshot's: ``add_param_group`` since (unfreezing mid-run), whose state it cannot hold."""
    if not isinstance(saved, dict) or "param_groups" not in saved:
        return  # an optimizer without groups of its own (a manual update loop's ParametersOnly)
    then = [len(g.get("params", ())) for g in saved["param_groups"]]
    now = [len(g["params"]) for g in optimizer.param_groups]
    if then != now:
        raise LookupError(f"it was taken before the optimizer's parameter groups changed (parameters per group "
                          f"then {then}, now {now}: add_param_group since?), so it cannot restore them")
