"""Recovery glue: in-memory snapshots, fault replay and LR cuts, wired into one Guard.

``Recovery`` owns the per-run state of the three mechanisms (``snapshot``, ``replay``, ``lrcut``)
and is called by the Guard at four points of a step: ``begin`` (guard.step), ``maybe_replay``
(after the step was measured, before it is decided), ``after_update`` / ``after_no_update``
(guard.optimizer_step), and ``restore`` (a ROLLBACK). See docs/client.md, "Recovery".
"""
import logging
import socket

import grpc

from . import distributed as dist_agree
from . import schedulers
from .lrcut import LrCuts, LrPolicy
from .replay import FaultClass, ReplayBudget, ReplayPolicy, StepFault, classify
from .rules import charged_output, within_bounds
from .rng import capture_rng, restore_rng
from .snapshot import EMPTY, SnapshotPolicy, SnapshotStore
from .snapshot_registration import MEMORY_SCHEME, SnapshotRegistrar
from .snapshot_schedule import SnapshotRing
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")

DEFAULT_MAX_BYTES = 8 << 30   # per slot: larger states need an explicit max_bytes (host memory!)


def _policy(value, cls, default):
    if value is None or value is True:
        return default
    if value is False:
        return None
    if isinstance(value, dict):
        return cls(**value)
    if isinstance(value, cls):
        return value
    raise TypeError(f"expected {cls.__name__}, a dict of its fields, True or False; got {value!r}")


def _fsdp1(model):
    return any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules())


def shard_optimizer(optimizer):
    """The optimizer whose state a snapshot holds: ZeroRedundancyOptimizer's local one (this rank's
    shard; its own state_dict() needs a consolidation, a collective, first) or the optimizer itself."""
    if type(optimizer).__name__ == "ZeroRedundancyOptimizer" and hasattr(optimizer, "optim"):
        return optimizer.optim
    return optimizer


class Recovery:
    def __init__(self, guard, snapshots=True, replay=True, lr=None):
        self.g = guard
        snap_policy = _policy(snapshots, SnapshotPolicy, SnapshotPolicy(max_bytes=DEFAULT_MAX_BYTES))
        if snap_policy is not None and not snap_policy.enabled:
            snap_policy = None
        if snap_policy is not None and _fsdp1(guard.model):
            snap_policy = None
            log.warning("trainguard: in-memory snapshots are off under FSDP1 (FullyShardedDataParallel): its "
                        "state_dict() hands out gathered copies, not the live shards, so a restore would not reach "
                        "the weights. Rollback targets: DCP checkpoints (dcp.save on every rank, "
                        "guard.checkpoint_saved(dir, step), guard.restore_hook loading with dcp.load), or FSDP2 "
                        "(fully_shard), whose shards snapshots hold")
        self.store = (SnapshotStore(guard.model, shard_optimizer(guard.optimizer), guard.scheduler, guard.scaler,
                                    snap_policy, guard.device)
                      if snap_policy is not None else None)
        kg = guard.policy_overrides.get("known_good_healthy_steps", 50)
        self.registrar = SnapshotRegistrar(guard)
        # Several ranks must snapshot at the same steps (rank 0 registers the slot for all): each
        # measures its own cost, and they pace by the largest, agreed in the confirmation's collective.
        self.ring = (SnapshotRing(self.store, kg, several_ranks=self.registrar.several_ranks)
                     if self.store is not None else None)
        self.lr = LrCuts(guard.optimizer, guard.scheduler, _policy(lr, LrPolicy, LrPolicy()))
        rp = _policy(replay, ReplayPolicy, ReplayPolicy())
        self.replay_policy = rp if rp is not None else ReplayPolicy(mode="off")
        if guard.scaler_on and self.replay_policy.mode != "off":
            # GradScaler keeps per-iteration state (unscaled, found_inf) that a second backward
            # would corrupt; its overflows are its own business anyway.
            log.info("trainguard: fault replay is off with an enabled GradScaler")
            self.replay_policy = ReplayPolicy(mode="off")
        self.budget = ReplayBudget(self.replay_policy)
        self.bad_positions = set()
        self.counters = {"snapshots": 0, "snapshot_restores": 0, "replays": 0, "transient": 0,
                         "deterministic": 0, "unstable": 0, "replay_unavailable": 0,
                         "replayed_updates": 0}
        self.device_name = f"{guard.device}@{socket.gethostname()}"
        self._step = None
        self._position = None
        self._rng = capture_rng() if self.replay_policy.mode != "off" else None
        # The RNG state is captured after every step only once the loop passes replay callables:
        # capturing Python's, NumPy's and torch's generators costs the loop ~0.1 ms a step for nothing.
        self._replay_offered = False
        self._prepared = False
        self._warned_big = False
        self._warned_no_fn = False
        self._first = True
        self._unsettled = None  # the snapshot of the last update, until the next step reads its schedulers

    # ------------------------------------------------------------------ set-up

    def opened(self, resp):
        """OpenRun answered: the run's effective policy says when a snapshot becomes known-good."""
        if self.ring is not None and resp is not None and resp.HasField("run"):
            if resp.run.policy.HasField("known_good_healthy_steps"):
                self.ring.known_good_steps = resp.run.policy.known_good_healthy_steps
        self.registrar.answered_again()  # back after an outage: ask at once, not after the backoff

    def begin(self, step, data_position, replay=None):
        if self._unsettled is not None:  # the last update's snapshot: the loop has stepped its scheduler since
            s, self._unsettled = self._unsettled, None
            s.scheduler_steps = schedulers.stepped_since(s.scheduler_marks)
        if self.g.connection.paused:
            return
        if replay is not None and not self._replay_offered:
            self._replay_offered = True
            if self._step is not None:
                self._rng = None  # not captured when this step began: no replay of this one
        self._step = step
        self._position = int(data_position) if data_position is not None else int(step) + 1
        if self._first:
            self._first = False
            if self.g.scheduler is None:  # built on the (wrapped) optimizer, not handed to the guard
                self.attach_scheduler(schedulers.built_on(*self._optimizers()))
            if self.ring is not None:
                # The state the loop starts from (weights not yet updated by this step): a rollback
                # target from the first steps on. Registered before this step is reported, so this
                # step already counts towards its known-good promotion.
                self._take(step - 1, self._position - 1, wait=True)

    def attach_scheduler(self, scheduler):
        """A scheduler the guard learned of after it was built (``guard.wrap(scheduler)``, or found on
        the optimizer at the first step): snapshots hold its state, LR cuts scale its base rates."""
        if scheduler is None:
            return
        self.g.scheduler = scheduler
        self.lr.attach(scheduler)
        if self.store is not None:
            self.store.scheduler = scheduler
            self.store.forget_layout()

    def _optimizers(self):
        wrapped = self.g._wrapped
        return (self.g.optimizer,) if wrapped is None else (self.g.optimizer, wrapped)

    # ------------------------------------------------------------------ replay

    def _fault(self, m, bounds, step, loss_absent=False):
        module = charged_output(m.module_names, m.loss, m.grad_norm, m.module_values)
        f = StepFault(m.loss, m.grad_norm, module=module, loss_absent=loss_absent)
        if not f.nonfinite and bounds is not None and bounds.usable(step):
            f.spike = not within_bounds(bounds, m.loss, m.grad_norm)
        return f

    def _capture_rng(self):
        """The RNG state after this step, for a replay of the next one; None when nothing replays."""
        if self.replay_policy.mode != "off" and self._replay_offered:
            self._rng = capture_rng()
            return self._rng
        return None

    def step_rng(self):
        """The RNG state the current step began with (None when replay is off)."""
        return self._rng

    def position(self):
        """The data position after the current step's batch."""
        return self._position

    def maybe_replay(self, step, m, replay_fn, meter, suppress=False, loss_absent=False):
        """Replays a faulty step once when the policy and budget allow. Returns (measurement to
        decide on, FaultClass or None). TRANSIENT returns the replay's clean measurement (the
        gradients now are the replay's); the other classes return the original one."""
        g = self.g
        if self.replay_policy.mode == "off":
            return m, None
        fault = self._fault(m, g.bounds, step, loss_absent)
        able = replay_fn is not None and self._rng is not None
        if not self.should_replay(step, fault, able, suppress):
            return m, None
        g.optimizer.zero_grad(set_to_none=True)
        restore_rng(self._rng)
        m2 = meter.read(replay_fn())
        cls = self.classify_replay(step, fault, m2, self._position)
        return (m2 if cls == FaultClass.TRANSIENT else m), cls

    def should_replay(self, step, fault, able, suppress, wants=None,
                      why_unable="pass guard.step(..., replay=fn) with fn re-running forward+backward on the same "
                                 "batch (a step the wrapper judged on its own has no batch to replay; "
                                 "Guard(replay=False) turns replays and this note off)"):
        """Whether step ``step`` (``fault``) is replayed now: the policy wants it (``wants``
        overrides the fault's own say, e.g. when another rank saw the fault), ``able`` (a replay
        callable and the step's RNG state) and the budget allows. With several ranks every rank
        answers the same (one small all_reduce: every rank must call this at the same step). A
        replay allowed here is counted against the budget."""
        wants = (self.budget.wants(fault) if wants is None else wants) and not suppress
        if dist_agree.is_initialized() and self.g.world_size > 1:
            # Every rank replays or none: the replay's forward/backward runs the collectives.
            wants_any, unable_any = dist_agree.max_ints([int(wants), int(not able)])
            wants, able = bool(wants_any), not unable_any
        if not wants:
            return False
        if not able:
            self.counters["replay_unavailable"] += 1
            if not self._warned_no_fn:
                self._warned_no_fn = True
                log.warning("trainguard: step %d is %s but cannot be replayed: %s (docs/client.md, Recovery)",
                            step, fault.describe(), why_unable)
            return False
        if not self.budget.allow(step):
            log.warning("trainguard: step %d not replayed: %d replays within %d steps already", step,
                        self.replay_policy.max_replays, self.replay_policy.window_steps)
            return False
        self.budget.spend(step)
        self.counters["replays"] += 1
        return True

    def classify_replay(self, step, fault, m2, position):
        """The class of step ``step``'s fault from its original pass and the replay's measurement
        ``m2`` (agreed across ranks: the most severe wins); records and reports it. ``position``:
        the data position after the step's batch."""
        g = self.g
        again = self._fault(m2, g.bounds, step)
        cls = classify(fault, again, self.replay_policy.spike_rtol)
        if dist_agree.is_initialized() and g.world_size > 1:
            cls = FaultClass(dist_agree.max_ints([int(cls)])[0])
        self.counters[cls.name.lower()] += 1
        detail = f"original: {fault.describe()}; replay: {again.describe()}"
        log.warning("trainguard: step %d replayed: %s (%s)", step, cls.name, detail)
        bad = (position - 1) if position else int(step)
        if cls == FaultClass.DETERMINISTIC:
            self.bad_positions.add(bad)
        if fault.faulty:  # a rank that saw nothing itself does not report another rank's fault
            self._report_fault(step, cls, detail, bad)
        return cls

    def _report_fault(self, step, cls, detail, data_position):
        g = self.g
        req = pb.ReportFaultRequest(run_id=g.run, rank=g.rank, step=int(step), fault_class=int(cls), detail=detail,
                                    device=self.device_name, data_position=int(data_position))
        try:
            r = g.transport.call("ReportFault", req)
            if r.device_suspect:
                log.error("trainguard: the sidecar marks %s suspect after %d transient faults", self.device_name,
                          r.device_transients)
        except grpc.RpcError as e:
            log.warning("trainguard: could not report the %s fault of step %d: %s", cls.name, step,
                        e.details() if hasattr(e, "details") else e)

    # ------------------------------------------------------------------ after the optimizer step

    def before_update(self):
        if self.store is not None:
            self.store.before_update()

    def after_update(self, step, late=False):
        """The step's update was applied (a healthy step). ``late``: learned at the next step, whose
        forward has run since (loop_updates): the RNG state it began with is gone, so no replay of it."""
        if self.g.connection.paused:
            return
        self.registrar.take_answers()
        self.lr.on_healthy()
        if self.ring is not None and step is not None and not self._prepared:
            self._prepared = True  # the optimizer state exists now: size every slot's buffers once
            self.store.prepare()
        if late:
            self._rng = None
        rng = None if late else self._capture_rng()  # first: a snapshot taken now reuses it
        if self.ring is not None and step is not None:
            self.registrar.register_ready()
            agreed = self.registrar.confirm(self.ring.on_healthy(step), self.ring.pace.steps_needed)
            if agreed is not None:
                self.ring.agree_pace(agreed)
            if self.ring.due():
                self._unsettled = self._take(step, rng=rng)

    def after_no_update(self, step, late=False):
        """The step was skipped (or rolled back, or halted); ``late``: as in after_update."""
        if self.g.connection.paused:
            return
        self.registrar.take_answers()
        self.lr.on_unhealthy()
        if self.ring is not None and step is not None:
            self.ring.on_unhealthy(step)
        if late:
            self._rng = None
        else:
            self._capture_rng()

    def _take(self, step, position=None, wait=False, rng=None):
        """Takes a snapshot into the ring's next slot; returns it (None: none taken)."""
        victim = self.ring.victim()
        if victim is None:
            return
        if position is None:
            position = self._position if self._position is not None else step + 1
        s = self.store.take(victim, step, position, self.lr.scale, rng=rng)
        if s is None:
            if not self._warned_big:
                self._warned_big = True
                log.warning("trainguard: in-memory snapshots off: the training state is %.2f GiB, above max_bytes "
                            "%.2f GiB (set snapshots={'max_bytes': ...} to allow it)", self.store.too_big / 2**30,
                            self.store.policy.max_bytes / 2**30)
            self.store = None
            self.ring = None
            return
        self.ring.taken()
        self.counters["snapshots"] += 1
        self.registrar.add(s)
        self.registrar.register_ready(now=wait)  # on the CPU (or after wait) at once: later steps count towards it
        return s

    # ------------------------------------------------------------------ rollback

    def holds(self, plan):
        return bool(plan.files) and plan.files[0].startswith(MEMORY_SCHEME)

    def restore(self, plan):
        """Restores the snapshot a memory RollbackPlan names; returns its lr_scale. Raises LookupError
        when this rank does not hold it (evicted, or taken by another process)."""
        if self.store is None:
            raise LookupError("in-memory snapshots are off in this process")
        self.registrar.take_answers()
        slot = plan.files[0].rsplit("/slot", 1)[-1]
        s = self.store.slots[int(slot)] if slot.isdigit() and int(slot) < len(self.store.slots) else None
        if s is None or s.step != plan.checkpoint_step or s.state == EMPTY:
            raise LookupError(f"snapshot {plan.files[0]} of step {plan.checkpoint_step} is not held by this rank")
        self.store.restore(s)
        self.counters["snapshot_restores"] += 1
        for other in self.store.slots:  # newer snapshots hold the trouble the rollback undoes
            if other.step > s.step:
                other.state = EMPTY
        self.ring.taken(measured=False)  # healthy steps towards the next snapshot count from the restored step
        self._capture_rng()
        return s.lr_scale

    # ------------------------------------------------------------------ state

    def state_dict(self):
        return {"lr": self.lr.state_dict(), "replay": self.budget.state_dict(),
                "bad_positions": sorted(self.bad_positions), "counters": dict(self.counters)}

    def load_state_dict(self, st):
        if not st:
            return
        self.lr.load_state_dict(st.get("lr", {}))
        self.budget.load_state_dict(st.get("replay", {}))
        self.bad_positions = set(st.get("bad_positions", []))
        self.counters.update(st.get("counters", {}))
