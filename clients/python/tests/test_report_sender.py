"""The report sender's hold: a held report is built and sent only once the training thread lets it
go (the next backward), and never later than anything that needs an answer."""
import threading
import time
import types

import pytest

from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
from trainguard.transport import ReportSender


class Recorder:
    """Stands in for the gRPC transport: records what was sent, and when."""

    def __init__(self):
        self.sent = []

    def call(self, name, request, deadline=None):
        self.sent.append((request.report.step, time.monotonic()))
        return None

    def steps(self):
        return [s for s, _ in self.sent]


LONG = 30.0  # a hold no test waits out: what lets a report go early is what is tested


def make_queue(hold_s):
    """A sender over a Recorder; ``q.report(step)`` is a deferred report that notes when it is built."""
    rec, built = Recorder(), []

    def report(step):
        def build():
            built.append(step)
            return pb.StepReport(step=step)
        return build
    sender = ReportSender(rec, lambda fut: None, hold_s=hold_s)
    return types.SimpleNamespace(sender=sender, rec=rec, built=built, report=report)


@pytest.fixture
def q():
    q = make_queue(LONG)
    yield q
    q.sender.close()


def test_held_report_waits_for_release_then_goes_in_order(q):
    fut = q.sender.submit_deferred(1, q.report(1), 0, hold=True)
    time.sleep(0.05)
    assert q.built == [] and q.rec.sent == []  # not even built: building is GIL work too
    q.sender.release()
    assert fut.wait(1.0)
    assert q.rec.steps() == [1]


def test_unheld_report_lets_the_held_ones_go_first(q):
    q.sender.submit_deferred(1, q.report(1), 0, hold=True)
    fut = q.sender.submit_deferred(2, q.report(2), 0)
    assert fut.wait(5.0)
    assert q.rec.steps() == [1, 2]


def test_flush_sends_held_reports_at_once(q):
    q.sender.submit_deferred(1, q.report(1), 0, hold=True)
    assert q.sender.flush(5.0)
    assert q.rec.steps() == [1]


def test_flush_through_a_step_waits_for_its_report_only(q):
    # prevents: a checkpoint registration waiting for reports it does not depend on (a device sync
    # and round trips on the training thread), or not waiting for the one it does
    q.sender.submit_deferred(5, q.report(5), 0, hold=True)
    assert q.sender.flush_through(3, 5.0)
    time.sleep(0.05)
    assert q.rec.sent == []
    assert q.sender.flush_through(5, 5.0)
    assert q.rec.steps() == [5]


def test_release_from_another_thread_wakes_the_sender(q):
    fut = q.sender.submit_deferred(1, q.report(1), 0, hold=True)
    threading.Timer(0.02, q.sender.release).start()  # as the autograd thread does at backward's start
    assert fut.wait(5.0)


def test_a_report_nobody_releases_goes_after_the_hold_limit():
    q = make_queue(0.2)
    try:
        t0 = time.monotonic()
        fut = q.sender.submit_deferred(1, q.report(1), 0, hold=True)
        assert fut.wait(5.0)
        assert q.rec.sent[0][1] - t0 >= 0.19
    finally:
        q.sender.close()
