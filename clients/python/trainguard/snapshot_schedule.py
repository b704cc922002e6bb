"""When to take an in-memory snapshot and which slot to write: the ring mirrors the sidecar's
known-good rule on the client, the pace keeps snapshots within their share of training time.
The snapshots themselves (buffers, copies, restore) are in :mod:`trainguard.snapshot`."""
import collections
import math
import time

from .snapshot import COPYING, EMPTY, KNOWN_GOOD, PENDING


class SnapshotRing:
    """Which slot to write when, mirroring the sidecar's known-good rule on the client.

    A snapshot is due every ``interval`` healthy steps, and only while no snapshot is waiting to
    become known-good: so one known-good snapshot always survives while the next is written.
    The victim is an empty slot, else the oldest known-good one (never the newest). An unhealthy
    step discards every snapshot that had not yet earned its healthy steps (the sidecar rejects
    those too). ``KNOWN_GOOD`` here means the sidecar confirmed it (see recovery.Recovery)."""

    def __init__(self, store, known_good_steps, several_ranks=lambda: False):
        self.store = store
        self.known_good_steps = int(known_good_steps)
        self._healthy_since_take = 0
        self.pace = SnapshotPace(store.policy.max_overhead)
        # Several ranks must snapshot at the same steps, and each measures a different cost: they pace
        # by a number of healthy steps all of them agreed on (agree_pace), not by their own clocks.
        # ``several_ranks()``: asked each time, the same test that decides the registrar's collectives.
        self.several_ranks = several_ranks
        self.agreed_steps = 0
        self._taken_layout = None  # the optimizer's number of parameter groups at the last snapshot

    @property
    def slots(self):
        return self.store.slots

    def pending(self):
        return [s for s in self.slots if s.state in (COPYING, PENDING)]

    def known_good(self):
        return sorted((s for s in self.slots if s.state == KNOWN_GOOD), key=lambda s: s.step)

    def on_healthy(self, step):
        """Counts one healthy step; returns the snapshots that earned known-good (client view)."""
        self._healthy_since_take += 1
        self.pace.on_step()
        earned, several = [], self.several_ranks()
        for s in self.slots:
            if s.state in (COPYING, PENDING) and step > s.step:
                s.healthy_since += 1
                # Several ranks enter the confirmation's collective for what they earned, so neither
                # whether a copy has landed nor this rank's part being finite may decide it: they wait
                # for the copy (long done after those steps) and agree on finiteness there.
                if (s.healthy_since >= self.known_good_steps and s.ready(wait=several)
                        and (several or s.finite())):
                    earned.append(s)
        return earned

    def on_unhealthy(self, step):
        # A snapshot that had not yet earned its healthy steps is rejected by the sidecar too; one
        # that earned them may already be the sidecar's rollback target (its confirmation can lag).
        for s in self.slots:
            if s.state in (COPYING, PENDING) and s.step < step and s.healthy_since < self.known_good_steps:
                s.state = EMPTY
        self._healthy_since_take = 0

    def _layout(self):
        # the number of groups, read on every healthy step without building anything: add_param_group adds one
        opt = getattr(self.store, "optimizer", None)
        return None if opt is None else len(opt.param_groups)

    def layout_changed(self):
        """The optimizer's parameter groups changed since the last snapshot (``add_param_group``: a
        backbone unfrozen): no snapshot held can be restored into it, so a rollback would halt until
        a new one earns known-good. One is then due at once, whatever the interval and the pace."""
        return self._taken_layout is not None and self._layout() != self._taken_layout

    def due(self):
        if self.pending():
            return False
        if self.layout_changed():
            return True
        if self.several_ranks():
            return self._healthy_since_take >= max(self.store.policy.interval, self.agreed_steps)
        return self._healthy_since_take >= self.store.policy.interval and self.pace.allows()

    def agree_pace(self, steps):
        """Several ranks: the healthy steps between two snapshots that they agreed on (the largest
        of their ``pace.steps_needed()``)."""
        self.agreed_steps = int(steps)

    def victim(self):
        empty = [s for s in self.slots if s.state == EMPTY]
        if empty:
            return empty[0].slot
        good = self.known_good()
        if len(good) > 1 or (good and self.layout_changed()):  # after add_param_group none of them restores
            return good[0].slot
        return None

    def taken(self, measured=True):
        """A snapshot was taken (``measured``: its cost paces the next one) or the state was
        restored from one (the healthy steps towards the next snapshot count from here)."""
        self._healthy_since_take = 0
        self._taken_layout = self._layout()
        if measured:
            self.pace.taken()
        else:
            self.pace.restart_clock()

    def find(self, step, slot=None):
        for s in self.slots:
            if s.step == step and s.state in (PENDING, KNOWN_GOOD, COPYING) and (slot is None or s.slot == slot):
                return s
        return None


class SnapshotPace:
    """Spaces snapshots in time by what they measurably cost (``SnapshotPolicy.max_overhead``).

    The cost of a snapshot is what the steps right after it took beyond the usual step time (the
    median of recent steps that no snapshot touched): the copy's launch on the host and, on CUDA,
    the next update waiting on the device for the copy to finish reading. The next snapshot is then
    due once ``cost / max_overhead`` seconds of training steps have run since: time between steps
    counts up to ``GAP_STEPS`` usual steps, so a validation pass, a pause or other work between
    steps does not make snapshots more frequent per step. Step times come from the healthy steps
    themselves (the time between two of them), so nothing is timed that the loop would not do anyway."""

    AFTER = 3            # steps after a snapshot whose excess time is its cost
    WINDOW = 32          # recent untouched step times kept for the median
    MAX_COST_STEPS = 10  # a cost counted as at most this many usual steps
    GAP_STEPS = 3        # time between two steps counted as training time up to this many usual steps

    def __init__(self, max_overhead):
        self.max_overhead = float(max_overhead)
        self.cost_s = 0.0
        self._times = collections.deque(maxlen=self.WINDOW)
        self._last = None
        self._after = 0
        self._excess = 0.0
        self._trained = 0.0   # training-step seconds since the last snapshot

    def on_step(self):
        if self.max_overhead <= 0:  # not paced: nothing to time
            return
        now = time.perf_counter()
        dt, self._last = (None if self._last is None else now - self._last), now
        if dt is None:
            return
        base = self.usual()
        self._trained += min(dt, self.GAP_STEPS * base) if base is not None else dt
        if self._after:
            self._excess += max(0.0, dt - base) if base is not None else 0.0
            self._after -= 1
            if not self._after:
                # Capped at a few usual steps: a validation pass or a checkpoint save that happens to
                # fall right after a snapshot must not push the next one off for hours.
                self.cost_s = min(self._excess, self.MAX_COST_STEPS * base) if base is not None else 0.0
            return
        self._times.append(dt)

    def restart_clock(self):
        """The next healthy step starts a fresh interval (after a pause, a rollback)."""
        self._last = None

    def usual(self):
        if not self._times:
            return None
        t = sorted(self._times)
        return t[len(t) // 2]

    def taken(self):
        self._after, self._excess, self._trained = self.AFTER, 0.0, 0.0

    def allows(self):
        if self.max_overhead <= 0:
            return True
        if self._after:  # the last snapshot's cost is still being measured
            return False
        return self._trained >= self.cost_s / self.max_overhead

    def steps_needed(self):
        """The measured cost as usual training steps to run between two snapshots (0: none
        measured yet, or not paced): what several ranks agree on, where time cannot be compared."""
        base = self.usual()
        if self.max_overhead <= 0 or not self.cost_s or not base:
            return 0
        return math.ceil(self.cost_s / self.max_overhead / base - 1e-6)  # 60.0000000001 steps are 60
