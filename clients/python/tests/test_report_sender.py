"""The report sender's hold: a held report is built and sent only once the training thread lets it
go (the next backward), and never later than anything that needs an answer."""
import threading
import time

from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
from trainguard.transport import ReportSender


class Recorder:
    """Stands in for the gRPC transport: records what was sent, and when."""

    def __init__(self):
        self.sent = []

    def call(self, name, request, deadline=None):
        self.sent.append((request.report.step, time.monotonic()))
        return None


def make_sender():
    rec = Recorder()
    built = []

    def deferred(step):
        def build():
            built.append(step)
            return pb.StepReport(step=step)
        return build
    sender = ReportSender(rec, lambda fut: None)
    return sender, rec, built, deferred


def test_held_report_waits_for_release_then_goes_in_order():
    sender, rec, built, deferred = make_sender()
    try:
        fut = sender.submit_deferred(1, deferred(1), 0, hold=True)
        time.sleep(0.05)
        assert built == [] and rec.sent == []  # not even built: building is GIL work too
        sender.release()
        assert fut.wait(1.0)
        assert [s for s, _ in rec.sent] == [1]
    finally:
        sender.close()


def test_unheld_report_lets_the_held_ones_go_first():
    sender, rec, _, deferred = make_sender()
    try:
        sender.submit_deferred(1, deferred(1), 0, hold=True)
        fut = sender.submit_deferred(2, deferred(2), 0)
        assert fut.wait(1.0)
        assert [s for s, _ in rec.sent] == [1, 2]
    finally:
        sender.close()


def test_flush_sends_held_reports_at_once():
    sender, rec, _, deferred = make_sender()
    try:
        sender.submit_deferred(1, deferred(1), 0, hold=True)
        t0 = time.monotonic()
        assert sender.flush(1.0)
        assert [s for s, _ in rec.sent] == [1]
        assert time.monotonic() - t0 < ReportSender.HOLD_S
    finally:
        sender.close()


def test_a_report_nobody_releases_goes_after_the_hold_limit():
    sender, rec, _, deferred = make_sender()
    try:
        t0 = time.monotonic()
        fut = sender.submit_deferred(1, deferred(1), 0, hold=True)
        assert fut.wait(ReportSender.HOLD_S + 1.0)
        waited = rec.sent[0][1] - t0
        assert ReportSender.HOLD_S * 0.9 <= waited < ReportSender.HOLD_S + 0.5
    finally:
        sender.close()


def test_release_from_another_thread_wakes_the_sender():
    sender, rec, _, deferred = make_sender()
    try:
        fut = sender.submit_deferred(1, deferred(1), 0, hold=True)
        threading.Timer(0.02, sender.release).start()  # as the autograd thread does at backward's start
        assert fut.wait(ReportSender.HOLD_S * 0.8)
    finally:
        sender.close()
