"""Step reports sent from a child process, so the gRPC call never holds the training process's GIL.

In a launch-bound loop (a compiled model at a small batch) the host sets the pace, and every
microsecond another thread of the training process holds the GIL is a microsecond the loop does not
launch kernels. The ReportStep call was most of the report thread's work there: 470-510 us of its
790-850 us of CPU per step on the H200 host (bench/gpu/sender_probe.py). Here the sender thread
hands the serialised request to a child process through a pipe and waits for the answer in
``select`` (no GIL); the child, which imports only grpc, makes the call. The report is still built,
and its answer applied, by the sender thread (the device's statistics and the guard's state live
here); only the transport moved.

Protocol on the child's stdin/stdout: a first frame with the channel's settings (JSON: target,
token, options), then one request frame per call, ``>Id`` (length, deadline seconds) + the request
bytes, answered by ``>IB`` (length, status) + the response bytes (status 0) or ``CODE\\ndetails``
of a failed call (status 1). The child exits when its stdin closes, so it never outlives the
trainer.
"""
import json
import logging
import os
import select
import struct
import subprocess
import sys
import threading

import grpc

log = logging.getLogger("trainguard")

_REQ = struct.Struct(">Id")
_RESP = struct.Struct(">IB")
_METHOD = "/trainguard.v1.TrainGuardService/ReportStep"
OK, FAILED = 0, 1


def wanted(choice, device_gate, device):
    """Whether reports go through a child process: ``choice`` True/False, or "auto": on the device
    gate on CUDA (where the training thread must not wait for the GIL). POSIX only (the parent
    waits on the pipe in select()). The environment's TRAINGUARD_REPORT_PROCESS=0/1 decides "auto"
    (benchmarks compare both)."""
    if choice != "auto":
        return bool(choice) and os.name == "posix"
    env = os.environ.get("TRAINGUARD_REPORT_PROCESS")
    if env is not None:
        return env != "0"
    return bool(device_gate) and device.type == "cuda" and os.name == "posix"


def for_transport(choice, transport, device_gate, device):
    """The ReportProcess for ``transport``'s target, or None where reports are sent in-process."""
    if not wanted(choice, device_gate, device):
        return None
    return ReportProcess(transport.target, transport.token, transport.options)


class ReportCallError(grpc.RpcError):
    """A ReportStep call that failed in the child (or a child that did not answer), with the same
    ``code()`` / ``details()`` as grpc's own errors, so the failure modes treat it alike."""

    def __init__(self, code, details):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def __str__(self):
        return f"{self._code.name}: {self._details}"


class ReportProcess:
    """The parent's side: ``call(request_bytes, deadline) -> response bytes`` through the child.
    Used by one thread at a time (the sender). A child that dies or stops answering is killed and
    started afresh on the next call; one that cannot start at all turns ``usable`` off, and the
    sender then calls in-process."""

    START_S = 20.0      # the longest a new child may take to import grpc and say it is ready
    MARGIN_S = 2.0      # beyond a call's deadline before a silent child is given up
    MAX_FAILED_STARTS = 3

    def __init__(self, target, token=None, options=()):
        self._settings = json.dumps({"target": target, "token": token, "options": list(options)}).encode()
        self._proc = None
        self._failed_starts = 0
        self.usable = True
        self.starts = 0
        self._lock = threading.Lock()

    def call(self, request: bytes, deadline: float) -> bytes:
        with self._lock:
            proc = self._sendable_child()
            try:
                frame = _REQ.pack(len(request), deadline) + request
                try:
                    _write_all(proc.stdin.fileno(), frame)
                except BrokenPipeError:  # it died between calls: nothing was sent, so a fresh one sends it
                    self._stop()
                    proc = self._start()
                    _write_all(proc.stdin.fileno(), frame)
                status, payload = self._read_frame(proc, deadline + self.MARGIN_S)
            except (OSError, EOFError) as e:  # the child died (or its pipe broke): a fresh one next time
                self._stop()
                raise ReportCallError(grpc.StatusCode.UNAVAILABLE, f"the report process exited ({e})") from None
            except TimeoutError:
                self._stop()
                raise ReportCallError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                      f"the report process did not answer within {deadline + self.MARGIN_S:.1f}s") from None
        if status == OK:
            return payload
        code, _, details = payload.decode("utf-8", "replace").partition("\n")
        raise ReportCallError(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), details)

    def close(self):
        with self._lock:
            self._stop()

    @property
    def pid(self):
        """The running child's pid, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _sendable_child(self):
        if self._proc is not None and self._proc.poll() is not None:  # it died since the last call
            self._stop()
        return self._proc or self._start()

    def _start(self):
        # The child gets this interpreter and this sys.path (the package and grpc may have been put
        # there by the program, not by the environment).
        code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); "
                "from trainguard.report_process import child_main; child_main()")
        try:
            proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(sys.path)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, close_fds=True)
            self._proc = proc
            _write_all(proc.stdin.fileno(), struct.pack(">I", len(self._settings)) + self._settings)
            status, _ = self._read_frame(proc, self.START_S)
            if status != OK:
                raise OSError("it could not open a channel")
        except (OSError, EOFError, TimeoutError) as e:
            self._stop()
            self._failed_starts += 1
            if self.starts == 0 or self._failed_starts >= self.MAX_FAILED_STARTS:  # never worked, or no longer
                self.usable = False
                log.warning("trainguard: the report process could not start (%s); reports are sent from the "
                            "training process instead", e)
            raise ReportCallError(grpc.StatusCode.UNAVAILABLE, f"the report process could not start ({e})") from None
        self._failed_starts = 0
        self.starts += 1  # children that came up
        return proc

    def _stop(self):
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # the child's read ends: it exits
            proc.wait(1.0)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()

    @staticmethod
    def _read_frame(proc, timeout):
        fd = proc.stdout.fileno()
        head = _read_exact(fd, _RESP.size, timeout)
        n, status = _RESP.unpack(head)
        return status, _read_exact(fd, n, timeout)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, n, timeout):
    """``n`` bytes from ``fd``, waiting in select (which releases the GIL) at most ``timeout`` s."""
    out = bytearray()
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, n - len(out))
        if not chunk:
            raise EOFError("end of stream")
        out += chunk
    return bytes(out)


def child_main():
    """The child: reads request frames from stdin, makes each call, writes the answer to stdout."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sys.stdout = sys.stderr  # nothing but frames may reach the parent's pipe

    def read(n):
        out = bytearray()
        while len(out) < n:
            chunk = os.read(stdin, n - len(out))
            if not chunk:
                raise SystemExit(0)  # the parent closed the pipe or died: nothing left to send
            out += chunk
        return bytes(out)

    def answer(status, payload):
        _write_all(stdout, _RESP.pack(len(payload), status) + payload)

    settings = json.loads(read(struct.unpack(">I", read(4))[0]))
    channel = grpc.insecure_channel(settings["target"], options=[tuple(o) for o in settings["options"]])
    call = channel.unary_unary(_METHOD)  # bytes in, bytes out
    metadata = (("authorization", "Bearer " + settings["token"]),) if settings["token"] else None
    answer(OK, b"")  # ready
    while True:
        n, deadline = _REQ.unpack(read(_REQ.size))
        request = read(n)
        try:
            answer(OK, call(request, timeout=deadline, metadata=metadata))
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            answer(FAILED, f"{code.name}\n{e.details() if hasattr(e, 'details') else e}".encode("utf-8", "replace"))
        except Exception as e:  # never leave the parent waiting
            answer(FAILED, f"UNKNOWN\n{type(e).__name__}: {e}".encode("utf-8", "replace"))
