"""A snapshot's RegisterCheckpoint is made by a worker thread after the reports before it: a slow
sidecar journal must stall neither the training step nor the reports, and the sidecar must still
see every snapshot after the report of the step it was taken at (its known-good count starts there).
Where the reports go through a child process, the registrations go through a child of their own."""
import os
import time

import pytest
import torch

from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
from trainguard.guard import Guard
from trainguard.snapshot import EMPTY, KNOWN_GOOD
from fake_sidecar import FakeSidecar
from models import batch, make
from test_report_process import alive, make_guard, train

REGISTER_S = 0.4  # each RegisterCheckpoint answer takes this long (a slow journal)


@pytest.fixture
def slow_journal():
    s = FakeSidecar(register_delay=REGISTER_S).start()
    yield s
    s.stop()


def _steps(g, model, opt, start, n):
    verdicts = []
    for step in range(start, start + n):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        verdicts.append(g.step(step, loss))
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    return verdicts


def test_slow_snapshot_registration_does_not_stall_steps_and_follows_its_report(slow_journal):
    model, opt = make()
    g = Guard(model, opt, "slow-register", target=slow_journal.target, deadline=5.0, mode="async",
              policy={"known_good_healthy_steps": 1}, snapshots={"interval": 1, "max_overhead": 0})
    _steps(g, model, opt, 0, 1)  # the run's first snapshot is registered on this thread, before any report
    t0 = time.perf_counter()
    _steps(g, model, opt, 1, 8)  # a snapshot earns known-good at step 1: its confirmation is queued
    elapsed = time.perf_counter() - t0
    assert elapsed < REGISTER_S, f"8 steps took {elapsed:.2f}s: the training thread waited for RegisterCheckpoint"
    assert g.flush(10) and g.recovery.registrar.flush(10)
    _steps(g, model, opt, 9, 1)  # the answers are applied at the next step, on the training thread
    known_good = [s for s in g.recovery.store.slots if s.state == KNOWN_GOOD]
    assert known_good, [(s.slot, s.state, s.step) for s in g.recovery.store.slots]
    assert all(s.checkpoint_id == f"ck-{s.step}" for s in known_good)
    g.close()
    calls = list(slow_journal.calls)
    registered = [step for name, step in calls if name == "RegisterCheckpoint"]
    assert len(registered) >= 3, calls  # the first snapshot, its confirmation, later snapshots
    for i, (name, step) in enumerate(calls):
        if name == "RegisterCheckpoint" and step >= 0:
            assert ("ReportStep", step) in calls[:i], f"snapshot of step {step} registered before its report: {calls}"


def test_a_snapshot_the_sidecar_has_not_confirmed_yet_is_asked_about_again_every_other_step():
    # prevents: the asks backing off 1, 2, 4, 8... steps apart while the sidecar answered "not yet" (its
    # reports a few steps behind): the ring takes no snapshot while one is pending, so the next came that
    # much later and a burst rolled back to an older one
    s = FakeSidecar(not_yet=4).start()
    try:
        model, opt = make()
        g = Guard(model, opt, "confirm-cadence", target=s.target, deadline=5.0, mode="sync", replay=False,
                  policy={"known_good_healthy_steps": 1}, snapshots={"interval": 3, "max_overhead": 0})
        for step in range(30):
            _steps(g, model, opt, step, 1)
            assert g.recovery.registrar.flush(10)  # each answer lands before the next step
        g.close()
        calls = list(s.calls)
    finally:
        s.stop()
    taken = sorted({step for name, step in calls if name == "RegisterCheckpoint" and step >= 0})
    assert len(taken) >= 3, calls  # the next snapshot comes once one is confirmed (2 with the backoff)
    first = taken[0]
    asked_at = []  # the report step just before each ask about the first snapshot
    for i, (name, step) in enumerate(calls):
        if name == "RegisterCheckpoint" and step == first:
            asked_at.append(max(st for n, st in calls[:i] if n == "ReportStep"))
    assert len(asked_at) == 5, asked_at  # registered and asked: 4 times "not yet", then known-good
    gaps = [b - a for a, b in zip(asked_at[1:], asked_at[2:])]
    assert gaps and max(gaps) <= 2, asked_at


def test_after_an_outage_a_pending_snapshot_is_asked_about_at_once_not_after_the_backoff(monkeypatch):
    # prevents: the backoff an outage built up (asks 1, 2, 4 ... 64 steps apart while the sidecar did not
    # answer) outliving it: the pending snapshot was confirmed, and the next one taken, up to 64 steps late
    from trainguard import connection
    monkeypatch.setattr(connection, "REOPEN_EVERY_S", 0.05)
    s = FakeSidecar().start()
    try:
        model, opt = make()
        g = Guard(model, opt, "confirm-after-outage", target=s.target, deadline=1.0, mode="sync", replay=False,
                  policy={"known_good_healthy_steps": 1}, snapshots={"interval": 1, "max_overhead": 0})
        _steps(g, model, opt, 0, 2)
        s.down = True
        for step in range(2, 40):  # the sidecar down: every ask for the pending snapshot goes unanswered
            _steps(g, model, opt, step, 1)
            g.recovery.registrar.flush(10)
        pending = [sl for sl in g.recovery.store.slots if sl.state not in (KNOWN_GOOD, EMPTY)]
        assert pending, [(sl.step, sl.state) for sl in g.recovery.store.slots]
        assert g.recovery.registrar._confirm_backoff >= 16  # the backoff the outage built
        s.down = False
        time.sleep(0.1)
        confirmed_at = None
        for step in range(40, 48):
            _steps(g, model, opt, step, 1)
            g.recovery.registrar.flush(10)
            if confirmed_at is None and all(sl.state == KNOWN_GOOD for sl in pending):
                confirmed_at = step
        g.close()
    finally:
        s.stop()
    assert confirmed_at is not None and confirmed_at <= 42, confirmed_at


def test_reports_behind_a_slow_registration_keep_their_own_deadline(slow_journal):
    # every step's report waits for its verdict (sync) with a deadline shorter than one registration
    model, opt = make()
    g = Guard(model, opt, "slow-register-sync", target=slow_journal.target, deadline=0.3, mode="sync",
              policy={"known_good_healthy_steps": 1}, snapshots={"interval": 1, "max_overhead": 0})
    verdicts = _steps(g, model, opt, 0, 10)
    assert g.recovery.registrar.flush(10)
    verdicts += _steps(g, model, opt, 10, 2)
    assert g.counters["sidecar_failures"] == 0, g.counters
    assert [v.action.name for v in verdicts] == ["APPLY"] * 12
    assert any(s.state == KNOWN_GOOD for s in g.recovery.store.slots)
    g.close()


@pytest.mark.torch2  # the device gate on the CPU needs fused AdamW (torch >= 2.4)
def test_snapshot_registrations_go_through_a_child_of_their_own(sidecar):
    # prevents: RegisterCheckpoint made in the training process, whose gRPC work held the GIL a
    # launch-bound loop launches with (a step two after a snapshot took up to 11 ms longer on one H200)
    g, model, opt = make_guard(sidecar.target, "child-registrations", policy={"known_good_healthy_steps": 2},
                               snapshots={"interval": 2, "max_overhead": 0})
    in_process = []
    call = g.transport.call
    g.transport.call = lambda method, *a, **kw: (in_process.append(method), call(method, *a, **kw))[1]
    train(g, model, opt, range(2))
    registrar = g.recovery.registrar
    assert registrar._process is not None and registrar._process.start()  # up (it starts aside at the first snapshot)
    child, reports_child = registrar._process.pid, g.sender.process.pid
    assert child not in (None, reports_child, os.getpid()) and alive(child)
    in_process.clear()
    train(g, model, opt, range(2, 30))
    assert g.flush(10) and registrar.flush(10)
    train(g, model, opt, range(30, 31))  # the answers are applied at the next step
    assert "RegisterCheckpoint" not in in_process, in_process
    listed = g.transport.call("GetRun", pb.GetRunRequest(run_id=g.run)).checkpoints
    memory = [c for c in listed if c.format == pb.CHECKPOINT_FORMAT_MEMORY and c.step >= 2]
    assert memory and any(c.state == pb.CHECKPOINT_STATE_KNOWN_GOOD for c in memory), listed
    assert g.recovery.ring.known_good(), [(s.slot, s.state, s.step) for s in g.recovery.store.slots]
    g.close()
    assert not alive(child)  # closed with the guard
