"""gRPC plumbing: hand-written stubs (version independent), deadlines, and the ordered report sender.

Only grpcio's generic ``unary_unary`` API is used, so the client runs on grpcio 1.51 and on current
releases alike; generated *_pb2_grpc.py files are avoided because newer ones check grpc versions.
"""
import collections
import logging
import threading

import grpc

from ._proto.trainguard.v1 import trainguard_pb2 as pb
from .token_source import resolve_token

log = logging.getLogger("trainguard")
_SERVICE = "/trainguard.v1.TrainGuardService/"

_METHODS = {
    "OpenRun": (pb.OpenRunRequest, pb.OpenRunResponse),
    "ReportStep": (pb.ReportStepRequest, pb.ReportStepResponse),
    "Heartbeat": (pb.HeartbeatRequest, pb.HeartbeatResponse),
    "BeginValidation": (pb.BeginValidationRequest, pb.BeginValidationResponse),
    "EndValidation": (pb.EndValidationRequest, pb.EndValidationResponse),
    "RegisterCheckpoint": (pb.RegisterCheckpointRequest, pb.RegisterCheckpointResponse),
    "GetRun": (pb.GetRunRequest, pb.GetRunResponse),
    "UpdatePolicy": (pb.UpdatePolicyRequest, pb.UpdatePolicyResponse),
    "CloseRun": (pb.CloseRunRequest, pb.CloseRunResponse),
    "InspectTensors": (pb.InspectTensorsRequest, pb.InspectTensorsResponse),
    "ReportFault": (pb.ReportFaultRequest, pb.ReportFaultResponse),
    "RestoreFailed": (pb.RestoreFailedRequest, pb.RestoreFailedResponse),
}


def normalize_target(target: str) -> str:
    """Accepts "host:port", "unix:///abs/path", "unix:/abs/path" or a bare socket path; refuses an HTTP
    URL (the run page's and the CLI's address, easily copied here), which gRPC would read as a host
    name "http" and report as nothing answering."""
    if target.lower().startswith(("http://", "https://")):
        raise ValueError(f"trainguard target {target!r} is an HTTP URL: pass host:port (e.g. "
                         f"{target.split('://', 1)[1].rstrip('/')!r}) or unix:///path/to/socket")
    if target.startswith("/"):
        return "unix://" + target
    return target


class Transport:
    """One channel to the sidecar; every call carries ``deadline`` seconds unless told otherwise."""

    def __init__(self, target: str, deadline: float = 0.5, token: str = None):
        self.target = normalize_target(target)
        self.token = resolve_token(token)
        self._metadata = (("authorization", "Bearer " + self.token),) if self.token else None
        self.deadline = float(deadline)
        # Fail fast while the sidecar is down instead of waiting for a reconnect inside the deadline.
        options = [("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.min_reconnect_backoff_ms", 100)]
        self.channel = grpc.insecure_channel(self.target, options=options)
        self._calls = {}
        for name, (req, resp) in _METHODS.items():
            self._calls[name] = self.channel.unary_unary(
                _SERVICE + name, request_serializer=req.SerializeToString,
                response_deserializer=resp.FromString)

    def call(self, name: str, request, deadline: float = None):
        return self._calls[name](request, timeout=self.deadline if deadline is None else deadline,
                                 metadata=self._metadata)

    def raw(self, name: str):
        """``call(request_bytes, deadline) -> response bytes`` for method ``name``: for a caller that
        serialised the request itself (the report process)."""
        stub = self.channel.unary_unary(_SERVICE + name)

        def call(request: bytes, deadline: float) -> bytes:
            return stub(request, timeout=deadline, metadata=self._metadata)
        return call

    def close(self):
        self.channel.close()


class ReportFuture:
    """The verdict of one queued report, filled in by the sender thread."""
    __slots__ = ("step", "generation", "blocking", "_event", "response", "error")

    def __init__(self, step, generation, blocking):
        self.step, self.generation, self.blocking = step, generation, blocking
        self._event = threading.Event()
        self.response = None
        self.error = None

    def done(self):
        return self._event.is_set()

    def wait(self, timeout):
        return self._event.wait(timeout)

    def _set(self, response=None, error=None):
        self.response, self.error = response, error
        self._event.set()


class ReportSender:
    """Sends step reports one at a time, in step order, on a daemon thread.

    Both the asynchronous (decided locally) and the blocking reports go through this one queue, so
    the sidecar always sees a rank's steps in order. The thread sleeps on a condition variable
    between reports: it never polls. ``on_result(future)`` runs on the sender thread for every
    finished report.

    A report can be *held* until ``release()`` (or ``hold_s``): building and sending it is Python
    work that needs the GIL, and in a loop that reads the loss on the host every step the training
    thread is the critical path right after that read, launching the update and the next forward
    on an idle GPU. Measured on the HF Trainer, the sender's work landed exactly there. Held, it
    runs when the next backward starts (``BackwardGate`` releases), while the training thread waits
    for the device without the GIL. Anything that needs an answer (a blocking report, ``flush``, a
    verdict awaited) releases first.
    """

    HOLD_S = 0.25  # the longest a held report waits for release(): the sidecar's record is late by at most this

    def __init__(self, transport: Transport, on_result, max_queue: int = 256, hold_s: float = None,
                 process=None):
        self.hold_s = self.HOLD_S if hold_s is None else hold_s
        self.process = process  # a ReportProcess: the call is made by a child process (report_process)
        self._busy = None  # the future being built or sent
        self._transport = transport
        self._on_result = on_result
        self._queue = collections.deque()
        self._cv = threading.Condition()
        self._max_queue = max_queue
        self._closed = False
        self._window = 0  # release() count: a held report waits until it passes the count it was queued at
        self.dropped = 0
        self.answered = 0  # reports the sidecar answered: a wait behind the queue sees it is there
        self._thread = threading.Thread(target=self._run, name="trainguard-sender", daemon=True)
        self._thread.start()

    def submit(self, report, generation, blocking=False) -> ReportFuture:
        fut = ReportFuture(report.step, generation, blocking)
        self._enqueue(report, fut)
        return fut

    def submit_deferred(self, step, build, generation, hold=False) -> ReportFuture:
        """Queues a report that does not exist yet: on its turn the sender thread calls ``build()``
        (which may block without the GIL, e.g. on a CUDA event, and returns the StepReport, or None
        for nothing to send) and sends what it returns. Keeps step order with ``submit``. ``hold``:
        not before the next ``release()`` (at most ``hold_s``)."""
        fut = ReportFuture(step, generation, False)
        self._enqueue(build, fut, hold)
        return fut

    def release(self):
        """Lets the held reports go: the training thread is about to wait for the device."""
        with self._cv:
            self._release_locked()

    def _release_locked(self):
        self._window += 1
        self._cv.notify_all()

    def _enqueue(self, item, fut, hold=False):
        with self._cv:
            if not hold:  # reports go in order: one that is not held lets the earlier ones go
                self._window += 1  # (the notify below wakes the sender)
            # A sidecar that stays away must not grow memory without bound: drop the oldest
            # asynchronous reports (they were decided already; only the record is lost). A deferred
            # one is still built, so the device's outcome reaches the counters; it is just not sent.
            while len(self._queue) >= self._max_queue:
                old_item, old, _ = self._queue.popleft()
                self.dropped += 1
                if callable(old_item):
                    try:
                        old_item()
                    except Exception:
                        log.exception("trainguard: deferred report failed")
                old._set(error=TimeoutError("report dropped: sender queue full"))
            self._queue.append((item, fut, self._window if hold else None))
            self._cv.notify_all()

    def flush(self, timeout: float) -> bool:
        """Waits until every queued report has been sent and its callback has run."""
        with self._cv:
            self._release_locked()
            return self._cv.wait_for(lambda: not self._queue and self._busy is None, timeout)

    def flush_through(self, step, timeout: float) -> bool:
        """Waits until the reports of steps <= ``step`` have been sent (the held reports let go at
        once). When none of them is still queued nothing is waited for and a later one stays held."""
        def pending():
            return (self._busy is not None and self._busy.step <= step) or any(f.step <= step for _, f, _ in self._queue)
        with self._cv:
            if not pending():
                return True
            self._release_locked()
            return self._cv.wait_for(lambda: not pending(), timeout)

    def _run(self):
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if self._closed and not self._queue:
                    return
                report, fut, held_at = self._queue.popleft()
                self._busy = fut
                if held_at is not None:
                    self._cv.wait_for(lambda: self._window > held_at or self._closed, self.hold_s)
            send = True
            try:
                if callable(report):
                    report = report()
                    send = report is not None
                if send:
                    fut.response = self._call(pb.ReportStepRequest(report=report))
                    self.answered += 1
            except Exception as e:  # grpc.RpcError or a serialisation problem: never kill the thread
                fut.error = e
            try:
                if send:
                    self._on_result(fut)
            except Exception:  # the callback must not kill the sender either
                log.exception("trainguard: report callback failed")
            finally:
                # done only once the verdict is applied (bounds, a late ROLLBACK): whoever waits for
                # it (GatedPath.await_verdicts) then sees what it brought
                fut._event.set()
                with self._cv:
                    self._busy = None
                    self._cv.notify_all()

    def _call(self, request):
        proc = self.process
        if proc is not None and proc.usable:
            answer = proc.call(request.SerializeToString(), self._transport.deadline)
            if answer is not None:  # else no child could take it: this process sends it (and the next
                return pb.ReportStepResponse.FromString(answer)  # ones, once it gave up)
        return self._transport.call("ReportStep", request)

    def close(self, timeout: float = 1.0):
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)
        if self.process is not None:
            self.process.close()
