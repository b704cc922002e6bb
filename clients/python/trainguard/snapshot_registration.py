"""Telling the sidecar about in-memory snapshots: RegisterCheckpoint(MEMORY) when a snapshot's copy
has landed, and again once the client counts it known-good, to learn whether the sidecar agrees.

The calls are made by the sender thread, in order with the reports. Made by the training thread
they waited for the reports before them, i.e. until the GPU had finished the step, and then for
the sidecar's journal: milliseconds in which a launch-bound loop queued no work. The answers come
back through a queue and are applied by the training thread at its next step (``take_answers``),
so slot states only ever change on that thread. Two registrations stay on the training thread:
the run's first snapshot (taken before the first report) and, with several ranks, the
confirmation, whose collective every rank must enter at the same step.
"""
import collections
import logging

from . import distributed as dist_agree
from .snapshot import EMPTY, KNOWN_GOOD
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")

MEMORY_SCHEME = "memory://"
_CONFIRM_MAX_WAIT = 64  # steps between two asks whether an earned snapshot is KNOWN_GOOD (backoff cap)
# the sidecar's answer on an earned snapshot: 0 known-good, 1 not yet (ask again), 2 never
_CONFIRM_CODES = {"CHECKPOINT_STATE_KNOWN_GOOD": 0, "CHECKPOINT_STATE_REJECTED": 2, "CHECKPOINT_STATE_EVICTED": 2}
_CONFIRM_STATES = {0: "CHECKPOINT_STATE_KNOWN_GOOD", 1: None, 2: "CHECKPOINT_STATE_REJECTED"}


class SnapshotRegistrar:
    """Registers one rank's snapshots and applies the sidecar's answers to their slots."""

    def __init__(self, guard):
        self.g = guard
        self.to_register = []               # taken snapshots whose copy may not have landed yet
        self._confirm_wait = 0
        self._confirm_backoff = 1
        self._confirming = None              # the queued confirmation's future (one at a time)
        self._answers = collections.deque()  # (on_answer, [(record, checkpoint)]) from the sender thread
        self.step = None                     # the step being trained (queued calls go after its report)

    def slot_name(self, s):
        return f"{MEMORY_SCHEME}{self._holder()}/rank{self.g.rank}/slot{s.slot}"

    def _holder(self):
        return self.g.trainer_instance.replace("/", "_")

    def _record(self, s):
        """What RegisterCheckpoint says of ``s``, fixed now (the slot may be rewritten before the
        sender thread makes the call): (slot, step, files, data position)."""
        if self.g.rank != 0 and self._ranks():
            return None  # rank 0 registers the slot for every rank
        return s, s.step, [pb.CheckpointFile(path=self.slot_name(s), size_bytes=s.nbytes)], s.data_position

    def _send(self, record, ordered):
        """Makes the call for ``record``; the sidecar's checkpoint message or None."""
        from .checkpointing import register
        _, step, files, position = record
        try:
            return register(self.g, step, files, fmt=pb.CHECKPOINT_FORMAT_MEMORY, data_position=position,
                            ordered=ordered)
        except Exception as e:  # a refusal must not stop training: the snapshot just never becomes a target
            log.warning("trainguard: snapshot of step %d not registered: %s", step, e)
            return None

    @staticmethod
    def _state(record, c):
        """The sidecar's state name for the snapshot (None: no answer), or False when the slot has
        been rewritten or dropped since the record was made (the answer is about another state)."""
        s, step = record[0], record[1]
        if s.step != step or s.state == EMPTY:
            return False
        if c is None:
            return None
        s.checkpoint_id = c.checkpoint_id
        return pb.CheckpointState.Name(c.state)

    def _register_now(self, s):
        """RegisterCheckpoint for ``s`` on this thread, after the reports before it; its state name."""
        record = self._record(s)
        return None if record is None else self._state(record, self._send(record, ordered=False))

    def _register_later(self, slots, on_answer):
        """Queues RegisterCheckpoint for ``slots`` on the sender thread; ``on_answer([(slot, state)])``
        runs on the training thread once they are answered. Returns the queued call's future."""
        records = [r for r in (self._record(s) for s in slots) if r is not None]
        if not records:
            return None

        def call():  # on the sender thread
            self._answers.append((on_answer, [(r, self._send(r, ordered=True)) for r in records]))
        return self.g.sender.submit_call(self.step if self.step is not None else -1, call, self.g.generation)

    def take_answers(self):
        """Applies the registrations the sender thread has answered since the last step."""
        while self._answers:
            on_answer, answered = self._answers.popleft()
            states = [(r[0], self._state(r, c)) for r, c in answered]
            on_answer([(s, state) for s, state in states if state is not False])

    def register_ready(self, now=False):
        """Registers snapshots whose copy has landed (on CUDA that is usually the next step); ``now``:
        on this thread (the run's first snapshot, before the first report)."""
        keep, ready = [], []
        for s in self.to_register:
            if s.state == EMPTY:
                continue
            if not s.ready():
                keep.append(s)
                continue
            if not s.finite():
                log.warning("trainguard: snapshot of step %d holds non-finite values; discarded", s.step)
                s.state = EMPTY
                continue
            ready.append(s)
        self.to_register = keep
        if now:
            self._on_registered([(s, self._register_now(s)) for s in ready])
        elif ready:
            self._register_later(ready, self._on_registered)

    def _on_registered(self, states):
        for s, state in states:
            if state == "CHECKPOINT_STATE_KNOWN_GOOD" and not self._ranks():
                # the state the run started from is a rollback target at once (no update in it yet).
                # Single rank only: with several, only rank 0 registers and slot states must stay
                # equal on every rank (they choose the next slot), so they wait for confirm()'s agreement.
                s.state = KNOWN_GOOD

    def confirm(self, earned):
        """A snapshot the client counts as known-good is only treated so once the sidecar agrees:
        then the other slot may be overwritten without ever losing the sidecar's rollback target."""
        if not earned or (self._confirming is not None and not self._confirming.done()):
            return
        if self._confirm_wait > 0:
            self._confirm_wait -= 1
            return
        self._confirm_wait = self._confirm_backoff  # reset once the sidecar answered either way
        if not self._ranks():
            self._confirming = self._register_later(earned, self._on_confirmed)  # registering again returns the record as it is now
            return
        states = []
        for s in earned:  # several ranks: rank 0 asks, all agree on its answer in one collective per snapshot
            code = _CONFIRM_CODES.get(self._register_now(s) if self.g.rank == 0 else None, 1)
            states.append((s, _CONFIRM_STATES[dist_agree.max_ints([code if self.g.rank == 0 else 0])[0]]))
        self._on_confirmed(states)

    def _on_confirmed(self, states):
        self._confirming = None
        for s, state in states:
            code = _CONFIRM_CODES.get(state, 1)
            if code == 0:
                s.state = KNOWN_GOOD
            elif code == 2:
                s.state = EMPTY
            else:
                # the sidecar has not counted as many healthy steps yet (reports in flight): ask again
                # after 1, 2, 4... steps, so an unreachable sidecar costs a call only now and then
                self._confirm_backoff = min(self._confirm_backoff * 2, _CONFIRM_MAX_WAIT)
                return
        self._confirm_wait, self._confirm_backoff = 0, 1

    def _ranks(self):
        return dist_agree.is_initialized() and self.g.world_size > 1
