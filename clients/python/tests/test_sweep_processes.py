"""Which process holds a run, and what the sidecar's answers mean, said in words (against the real
sidecar jar, or a fake one for a full journal): a second process on a run and rank, a retry in one process,
two live Guards of one process on one run, a halted Guard followed by a retry, a journal that cannot record."""
import time

import pytest

from trainguard.guard import Guard
from models import make
from test_sweep_regressions import healthy_step


def test_a_second_process_on_a_run_and_rank_another_still_holds_is_told_in_words(sidecar, caplog):
    # prevents: two processes under one run id (a script with a hard-coded run name run twice, processes
    # that all think they are rank 0) merged silently: their steps interleaved, each evicting the
    # other's in-memory snapshots
    model, opt = make()
    run = f"held-rank-{time.time_ns()}"
    first = Guard(model, opt, run, target=sidecar.target, deadline=5.0)
    for step in range(3):
        healthy_step(first, model, opt, step)
    assert first.flush(10)
    other_model, other_opt = make()
    with caplog.at_level("WARNING", logger="trainguard"):  # as another process, on another host, names itself
        second = Guard(other_model, other_opt, run, target=sidecar.target, deadline=5.0,
                       trainer_instance="other-host:4242:feedbeef")
    said = [m for code, _, m in second.findings if code == "RANK_HELD_BY_ANOTHER_PROCESS"]
    assert said and first.trainer_instance in said[0] and "own run id" in said[0], second.findings
    assert any("RANK_HELD_BY_ANOTHER_PROCESS" in r.getMessage() for r in caplog.records)
    assert not [c for c, _, _ in first.findings if c == "RANK_HELD_BY_ANOTHER_PROCESS"]  # the first was alone
    second.close()
    first.close()


def test_a_retry_in_one_process_is_a_take_over_and_two_live_guards_on_one_run_are_said(sidecar, caplog):
    # prevents: a retry in the same process after a crash (fit(ckpt_path="last"), as the docs recommend: the
    # crashed Guard detached without closing the run) told that "another trainer process" holds the rank;
    # while two Guards of one process training one run at once must still be said
    model, opt = make()
    run = f"retry-in-process-{time.time_ns()}"
    crashed = Guard(model, opt, run, target=sidecar.target, deadline=5.0)
    for step in range(3):
        healthy_step(crashed, model, opt, step)
    crashed.close(close_run=False)  # what an exception in fit() leaves
    caplog.clear()
    with caplog.at_level("INFO", logger="trainguard"):
        retry = Guard(model, opt, run, target=sidecar.target, deadline=5.0)
    assert [c for c, _, _ in retry.findings] == ["RANK_REOPENED_IN_PROCESS"], retry.findings
    assert not [r for r in caplog.records if r.levelname == "WARNING" and run in r.getMessage()], caplog.text
    caplog.clear()
    other_model, other_opt = make()
    with caplog.at_level("WARNING", logger="trainguard"):
        second = Guard(other_model, other_opt, run, target=sidecar.target, deadline=5.0)
    said = [r.getMessage() for r in caplog.records if "two Guards of this process train run" in r.getMessage()]
    assert len(said) == 1 and retry.trainer_instance in said[0] and "own run id" in said[0], caplog.text
    second.close()
    retry.close()


def test_a_journal_that_cannot_record_is_said_as_the_sidecars_answer_not_as_nothing_listening():
    # prevents: a full journal disk (the sidecar up, answering UNAVAILABLE with why) told to the trainer as
    # "nothing answered there (connection refused, a wrong host ...)" with "start the sidecar" as the fix:
    # an on-call person went looking for a network fault
    from fake_sidecar import FakeSidecar
    from trainguard.errors import SidecarUnavailable
    s = FakeSidecar().start()
    try:
        model, opt = make()
        g = Guard(model, opt, "journal-full-words", target=s.target, deadline=1.0, mode="sync", replay=False,
                  snapshots=False, failure_mode="closed")
        healthy_step(g, model, opt, 0)
        s.down = ("trainguard sidecar: the journal could not record this within 2000 ms (check the journal volume: "
                  "disk full? read-only?)")
        with pytest.raises(SidecarUnavailable) as e:
            healthy_step(g, model, opt, 1)
        said = str(e.value)
        assert "the sidecar answered, but cannot record the call now: the journal could not record" in said, said
        assert "nothing answered there" not in said and "start the sidecar" not in said, said
        assert "journal volume room" in said, said
        s.down = False
        g.close()
    finally:
        s.stop()


def test_a_guard_halted_in_this_process_is_no_live_second_guard_on_its_run(caplog):
    # prevents: "two Guards of this process train run ... at once" said when the first Guard had raised
    # TrainingHalted (it trains no more) and the operator's resume was followed by a new Guard, a retry
    import trainguard
    from fake_sidecar import FakeSidecar
    from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
    s = FakeSidecar().start()
    s.force[1] = pb.Action.Value("ACTION_HALT")
    try:
        model, opt = make()
        halted = Guard(model, opt, "halted-then-retried", target=s.target, deadline=2.0, mode="sync", replay=False,
                       snapshots=False)
        with pytest.raises(trainguard.TrainingHalted):
            for step in range(3):
                healthy_step(halted, model, opt, step)
        caplog.clear()
        retry = Guard(model, opt, "halted-then-retried", target=s.target, deadline=2.0, mode="sync", replay=False,
                      snapshots=False)
        assert not [r for r in caplog.records if "two Guards of this process" in r.getMessage()], caplog.text
        retry.close()
    finally:
        s.stop()
