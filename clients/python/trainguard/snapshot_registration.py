"""Telling the sidecar about in-memory snapshots: RegisterCheckpoint(MEMORY) when a snapshot's copy
has landed, and again once the client counts it known-good, to learn whether the sidecar agrees.

The calls are made by a worker thread of their own. Each still waits for the reports of the steps
up to the snapshot's (``reports_first``), i.e. until the GPU has finished that step, and then for
the sidecar's journal: milliseconds in which a launch-bound loop, had it waited itself, would have
queued no work. Not the sender thread: the reports behind a slow registration would then wait
past their own deadline. The answers come back through a queue and are applied by the training
thread at its next step (``take_answers``), so slot states only ever change on that thread; an
answer about a slot taken again since, or from before a rollback, is dropped. Two registrations
stay on the training thread: the run's first snapshot (taken before the first report) and, with
several ranks, the confirmation, whose collective every rank must enter at the same step.
Where the reports go through a child process (report_process), the registrations' gRPC calls are
made by a second child, so that their Python work does not hold this process's GIL either.
"""
import collections
import logging
import queue
import threading

from . import distributed as dist_agree
from .protect import first_non_finite_state, ship_bad_tensor
from .report_process import ReportProcess
from .snapshot import EMPTY, KNOWN_GOOD
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")

MEMORY_SCHEME = "memory://"
_CONFIRM_MAX_WAIT = 64  # steps between two asks whether an earned snapshot is KNOWN_GOOD (backoff cap)
# the sidecar's answer on an earned snapshot: 0 known-good, 1 not yet (ask again soon), 2 no answer (ask
# again later and later), 3 never. Ranks agree on the largest: "never" wins, "known-good" only if all say so.
_KNOWN, _NOT_YET, _NO_ANSWER, _NEVER = 0, 1, 2, 3
_CONFIRM_CODES = {"CHECKPOINT_STATE_KNOWN_GOOD": _KNOWN, "CHECKPOINT_STATE_REJECTED": _NEVER,
                  "CHECKPOINT_STATE_EVICTED": _NEVER, None: _NO_ANSWER}


def _confirm_code(state):
    return _CONFIRM_CODES.get(state, _NOT_YET)

# What RegisterCheckpoint says of a slot, fixed when the call is queued (the slot may be rewritten
# before the worker makes it): the slot, its step and when it was taken (to recognise it in the
# answer), the files and the data position sent
_Record = collections.namedtuple("_Record", "slot step taken_at files position")


class SnapshotRegistrar:
    """Registers one rank's snapshots and applies the sidecar's answers to their slots."""

    def __init__(self, guard):
        self.g = guard
        self.to_register = []               # taken snapshots whose copy may not have landed yet
        self._confirm_wait = 0
        self._confirm_backoff = 1
        self._confirming = None              # the queued confirmation's future (one at a time)
        self._non_finite_said = set()        # live tensors a non-finite snapshot was filed for
        self._answers = collections.deque()  # (on_answer, generation, [(record, checkpoint)]) from the worker
        self._jobs = queue.SimpleQueue()
        self._worker = None
        self._closed = False
        self._process = None  # the registrations' ReportProcess (where the reports have one), from the first snapshot

    def slot_name(self, s):
        return f"{MEMORY_SCHEME}{self._holder()}/rank{self.g.rank}/slot{s.slot}"

    def _holder(self):
        return self.g.trainer_instance.replace("/", "_")

    def _record(self, s):
        """The _Record of ``s``; None on a rank other than 0 of several (rank 0 registers every slot)."""
        if self.several_ranks() and not self.g.every_rank.registers_snapshots():
            return None
        return _Record(s, s.step, s.taken_at, [pb.CheckpointFile(path=self.slot_name(s), size_bytes=s.nbytes)],
                       s.data_position)

    def _send(self, record):
        """Makes the call for ``record`` after the reports before it; the checkpoint message or None."""
        from .checkpointing import register
        try:
            # Through a child process where the reports go through one: the gRPC call's Python work
            # in this process held the GIL the training thread launches with (docs/benchmarks.md,
            # Issue 21, nineteenth pass). A child of its own: a report never waits behind it.
            return register(self.g, record.step, record.files, fmt=pb.CHECKPOINT_FORMAT_MEMORY,
                            data_position=record.position, process=self._process)
        except Exception as e:  # a refusal must not stop training: the snapshot just never becomes a target
            log.warning("trainguard: snapshot of step %d not registered: %s", record.step, e)
            return None

    @staticmethod
    def _state(record, c):
        """The sidecar's state name for the snapshot (None: no answer), or False when the slot has
        been taken again or dropped since the record was made (the answer is about another state;
        after a rollback the same step may be taken again, hence the time of the take)."""
        s = record.slot
        if s.step != record.step or s.taken_at != record.taken_at or s.state == EMPTY:
            return False
        if c is None:
            return None
        s.checkpoint_id = c.checkpoint_id
        return pb.CheckpointState.Name(c.state)

    def _register_now(self, s):
        """RegisterCheckpoint for ``s`` on this thread, after the reports before it; its state name."""
        record = self._record(s)
        return None if record is None else self._state(record, self._send(record))

    def _register_later(self, slots, on_answer):
        """Queues RegisterCheckpoint for ``slots`` on the worker; ``on_answer([(slot, state)])`` runs on
        the training thread once they are answered. Returns an Event set when the call is over
        (answered, failed, or skipped after a rollback), or None when nothing was queued."""
        records = [r for r in (self._record(s) for s in slots) if r is not None]
        if not records:
            return None
        over, generation = threading.Event(), self.g.generation

        def call():  # on the worker
            try:
                if self.g.generation == generation and not self._closed:  # else a rollback since: history
                    self._answers.append((on_answer, generation, [(r, self._send(r)) for r in records]))
            finally:
                over.set()
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="trainguard-register", daemon=True)
            self._worker.start()
        self._jobs.put(call)
        return over

    def _work(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # never kill the worker
                log.exception("trainguard: snapshot registration failed")

    def flush(self, timeout):
        """Waits until the queued registrations have been made (their answers apply at the next step)."""
        if self._worker is None:
            return True
        done = threading.Event()
        self._jobs.put(done.set)
        return done.wait(timeout)

    def close(self, timeout):
        """Lets a call in flight finish (at most ``timeout``) before the channel closes under it;
        calls still queued are not made."""
        self._closed = True
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join(timeout)
        if self._process is not None:
            self._process.close()

    def take_answers(self):
        """Applies the registrations the worker has answered since the last step."""
        while self._answers:
            on_answer, generation, answered = self._answers.popleft()
            if generation != self.g.generation:
                continue  # answered across a rollback: about snapshots the rollback dropped
            states = [(r.slot, self._state(r, c)) for r, c in answered]
            on_answer([(s, state) for s, state in states if state is not False])

    def add(self, s):
        """A snapshot just taken, registered once its copy has landed (a slot taken again before
        that is listed once)."""
        self.to_register = [x for x in self.to_register if x is not s] + [s]
        if self._process is None and self.g.sender.process is not None:
            t = self.g.transport
            self._process = ReportProcess(t.target, t.token)
            self._process.start_aside()  # ~0.5 s to start: the registrations until then are made here

    def register_ready(self, now=False):
        """Registers snapshots whose copy has landed (on CUDA that is usually the next step); ``now``:
        waits for the copy and registers on this thread (the run's first snapshot, before the first
        report)."""
        keep, ready = [], []
        for s in self.to_register:
            if s.state == EMPTY:
                continue
            if not s.ready(wait=now):
                keep.append(s)
                continue
            if not s.finite():
                self._say_non_finite(s)
                if not self.several_ranks():  # several: every rank drops it at once, in confirm()'s collective
                    s.state = EMPTY
                continue
            ready.append(s)
        self.to_register = keep
        if now:
            self._on_registered([(s, self._register_now(s)) for s in ready])
        elif ready:
            self._register_later(ready, self._on_registered)

    def _say_non_finite(self, s):
        """A snapshot that holds a non-finite value: names what in the live state is non-finite now too
        (an optimizer moment corrupted by a fault leaves the loss and gradients finite, and every later
        snapshot holds it) and files it with the sidecar once per tensor; else the copy alone went bad."""
        g = self.g
        found = first_non_finite_state(g.model, g.optimizer)
        what = "every rank drops it when they agree on it" if self.several_ranks() else "discarded"
        if found is None:
            log.warning("trainguard: snapshot of step %d holds non-finite values, though the live state is finite "
                        "now (the copy went bad); %s", s.step, what)
            return
        name, tensor = found
        said = self._non_finite_said
        if name in said:
            log.warning("trainguard: snapshot of step %d holds the non-finite %s again; %s", s.step, name, what)
            return
        said.add(name)
        log.error("trainguard: snapshot of step %d holds non-finite values: %s is non-finite in the live training "
                  "state (the loss and gradients can stay finite while it is: a corrupted optimizer moment or "
                  "weight). Every later snapshot holds it, so none becomes a rollback target until it is repaired; "
                  "the run's earlier targets stay. Roll back (restart from your last good checkpoint) if it does not "
                  "go away; %s", s.step, name, what)
        ship_bad_tensor(g, s.step, name, tensor, note="non-finite in the live state, found by a snapshot")

    def _on_registered(self, states):
        for s, state in states:
            if state == "CHECKPOINT_STATE_KNOWN_GOOD" and not self.several_ranks():
                # the state the run started from is a rollback target at once (no update in it yet).
                # Single rank only: with several, only rank 0 registers and slot states must stay
                # equal on every rank (they choose the next slot), so they wait for confirm()'s agreement.
                s.state = KNOWN_GOOD

    def confirm(self, earned, pace_steps=lambda: 0):
        """A snapshot the client counts as known-good is only treated so once the sidecar agrees:
        then the other slot may be overwritten without ever losing the sidecar's rollback target.
        Several ranks: the same collective agrees on the snapshots' pace, the largest of the ranks'
        ``pace_steps()``, which it returns (None when no collective ran)."""
        if not earned or (self._confirming is not None and not self._confirming.is_set()):
            return None
        if self._confirm_wait > 0:
            self._confirm_wait -= 1
            return None
        self._confirm_wait = self._confirm_backoff  # reset once the sidecar answered either way
        if not self.several_ranks():  # registering again returns the record as it is now
            self._confirming = self._register_later(
                earned, lambda states: self._on_confirmed([(s, _confirm_code(st)) for s, st in states]))
            return None
        codes, agreed, mine = [], 0, pace_steps()
        for s in earned:  # several ranks: rank 0 asks, all agree on its answer in one collective per snapshot
            if not s.finite():
                code = _NEVER  # this rank's part is not finite: every rank drops the snapshot
            else:
                code = _confirm_code(self._register_now(s)) if self.g.every_rank.registers_snapshots() else _KNOWN
            code, agreed = dist_agree.max_ints([code, mine])
            codes.append((s, code))
        self._on_confirmed(codes)
        return agreed

    def _on_confirmed(self, codes):
        """(slot, code) per asked snapshot, codes as in _CONFIRM_CODES."""
        self._confirming = None
        for s, code in codes:
            if code == _KNOWN:
                s.state = KNOWN_GOOD
            elif code == _NEVER:
                s.state = EMPTY
            elif code == _NOT_YET:
                # the sidecar answered but has not counted the healthy steps yet (reports in flight): ask
                # again at the next step but one. Backing off here, a report lag of a few steps made the
                # asks 1, 2, 4, 8... steps apart and held the next snapshot back by as many (the ring
                # takes none while one is pending), so a burst rolled back further than it needed to.
                self._confirm_wait, self._confirm_backoff = 1, 1
                return
            else:
                # no answer (the sidecar unreachable): ask again after 1, 2, 4... steps, so an unreachable
                # sidecar costs a call only now and then
                self._confirm_backoff = min(self._confirm_backoff * 2, _CONFIRM_MAX_WAIT)
                return
        self._confirm_wait, self._confirm_backoff = 0, 1

    def answered_again(self):
        """The sidecar answered an OpenRun (the first, or one after an outage): a snapshot pending
        confirmation is asked about at the next step, not after the backoff the outage built up (up to
        64 steps, during which the ring takes no new snapshot)."""
        self._confirm_wait, self._confirm_backoff = 0, 1

    def several_ranks(self):
        """Several ranks in a process group: rank 0 registers, and they agree in collectives."""
        return dist_agree.is_initialized() and self.g.world_size > 1
