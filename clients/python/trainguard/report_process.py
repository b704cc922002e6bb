"""Step reports sent from a child process, so the gRPC call never holds the training process's GIL.

In a launch-bound loop (a compiled model at a small batch) the host sets the pace, and every
microsecond another thread of the training process holds the GIL is a microsecond the loop does not
launch kernels. The ReportStep call was most of the report thread's work there: 470-510 us of its
790-850 us of CPU per step on the H200 host (bench/gpu/sender_probe.py). Here the sender thread
hands the serialised request to a child process through a pipe and waits for the answer in
``poll`` (no GIL); the child, which imports grpc and this package (not torch), makes the call. The
report is still built, and its answer applied, by the sender thread (the device's statistics and
the guard's state live here); only the transport moved.

Protocol on the child's stdin/stdout (its sys.path comes as its argument): a first frame with the
settings (JSON: target, token), answered by the line ``READY`` once the channel is open (anything
the interpreter printed before it is skipped; after it the child's fd 1 points at its stderr). Then one
request frame per call, ``>IdB`` (length, deadline seconds, the method's index in ``METHODS``) + the
request bytes, answered by ``>IB`` (length, status) + the response bytes (status 0) or
``CODE\\ndetails`` of a failed call (status 1).
The child exits when its stdin closes: when the trainer closes it, exits or is killed.
"""
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import weakref

import grpc

from .connection import grpc_code
from .transport import Transport

log = logging.getLogger("trainguard")

_REQ = struct.Struct(">IdB")  # length, deadline seconds, the method's index in METHODS
METHODS = ("ReportStep", "RegisterCheckpoint")  # the step reports; in-memory snapshots' registrations
_RESP = struct.Struct(">IB")
_LEN = struct.Struct(">I")
_READY = b"TRAINGUARD-REPORT-PROCESS-READY\n"
OK, FAILED = 0, 1
# The child's first lines, run before anything else is imported: fd 1 (the answers) is kept aside and
# pointed at stderr, so no print of grpc or of this package can reach the pipe (what the interpreter
# prints before them, e.g. from a .pth file, is skipped up to READY).
_BOOT = ("import os, sys, json; out = os.dup(1); os.dup2(2, 1); sys.path[:0] = json.loads(sys.argv[1]); "
         "from trainguard.report_process import child_main; child_main(out)")
_OFF = ("0", "false", "no", "off")


def wanted(choice, device_gate, device):
    """Whether reports go through a child process: ``choice`` True/False, or "auto": on the device
    gate on CUDA (where the training thread must not wait for the GIL). POSIX only. The environment's
    TRAINGUARD_REPORT_PROCESS (0/false/no/off, else on) decides "auto" (benchmarks compare both)."""
    if os.name != "posix":
        return False
    if choice != "auto":
        return bool(choice)
    env = os.environ.get("TRAINGUARD_REPORT_PROCESS")
    if env is not None:
        return env.strip().lower() not in _OFF
    return bool(device_gate) and device.type == "cuda"


def for_transport(choice, transport, device_gate, device):
    """The ReportProcess for ``transport``'s target, started (so the first report does not wait for
    an interpreter to start), or None where reports are sent in-process."""
    if not wanted(choice, device_gate, device):
        return None
    proc = ReportProcess(transport.target, transport.token)
    proc.start()
    return proc


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


_LIVE = weakref.WeakSet()  # every ReportProcess: a forked process must not keep their pipes open


def _forget_in_forked_child():
    # A fork (a DataLoader worker) inherits the pipes. Holding the child's stdin open would keep the
    # child alive after the trainer is gone, so the copy closes them and never uses the child.
    for proc in list(_LIVE):
        proc._abandon()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_forked_child)


class ReportProcess:
    """The parent's side: ``call(request_bytes, deadline) -> response bytes`` through the child.
    Calls take turns (the sender's reports; the snapshot registrations have a child of their own).
    A child that dies or stops answering is killed, and a fresh one is started on a thread of its
    own: a new interpreter takes ~0.5 s (at most ``START_S``) to import grpc and open its channel,
    and no report waits for that. While there is no child, ``call`` returns None: nothing was sent,
    the caller sends that report itself. After the first start fails, or three in a row (or
    ``close()``), ``usable`` is off for good."""

    START_S = 20.0      # the longest a new child may take to import grpc and say it is ready
    MARGIN_S = 2.0      # beyond a call's deadline before a silent child is given up
    MAX_FAILED_STARTS = 3
    MAX_NOISE = 1 << 16  # bytes the interpreter may print before READY

    def __init__(self, target, token=None):
        self._settings = {"target": target, "token": token}
        self._proc = None
        self._answers = None  # the running child's stdout (_Answers)
        self._failed_starts = 0
        self._sigpipe_blocked = set()  # threads that write to the pipe with SIGPIPE blocked
        self.usable = True
        self.starts = 0  # children that came up
        self._starting = None  # the thread starting a child, while it does
        self._spawning = None  # the child it starts, until it said READY
        self._lock = threading.Lock()
        _LIVE.add(self)

    def start(self):
        """Starts the child and waits until it is ready; False (and a warning) where it cannot start."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                self._stop()  # it died since the last call
            starting = self._start_aside()
        if starting is not None:
            starting.join()
        return self.pid is not None

    def start_aside(self):
        """Starts a child on a thread of its own where none runs or is starting; returns at once."""
        with self._lock:
            self._start_aside()

    def call(self, request: bytes, deadline: float, method: str = "ReportStep"):
        """The response bytes of ``method`` (one of METHODS); None when no child could take the call
        (nothing was sent). Calls from several threads take turns."""
        with self._lock:
            self._block_sigpipe()
            # A child that died since the last call is found by the write (EPIPE), not by asking for
            # its exit status here on every call.
            self._start_aside()  # only where there is none
            proc = self._proc
            if proc is None:
                return None
            header = _REQ.pack(len(request), deadline, METHODS.index(method))
            try:
                try:
                    _write_all(proc.stdin.fileno(), header, request)
                except BrokenPipeError:  # it died between calls: nothing was sent, the caller sends it
                    self._stop()
                    self._start_aside()
                    return None
                status, payload = self._read_frame(deadline + self.MARGIN_S)
            except TimeoutError:
                self._stop(kill=True)
                raise ReportCallError(grpc.StatusCode.DEADLINE_EXCEEDED, "the report process did not answer "
                                      f"within {deadline + self.MARGIN_S:.1f}s; it was stopped") from None
            except (OSError, EOFError) as e:
                self._stop()
                raise ReportCallError(grpc.StatusCode.UNAVAILABLE,
                                      f"the report process exited ({_reason(e)})") from None
            except BaseException:  # whatever it is, a child with an answer nobody read must not serve the next call
                self._stop()
                raise
        if status == OK:
            return payload
        code, _, details = payload.decode("utf-8", "replace").partition("\n")
        raise ReportCallError(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), details)

    def close(self):
        """Stops the child for good: a later call returns None and starts nothing."""
        self.usable = False
        spawning = self._spawning
        if spawning is not None:  # a start in progress ends now: its handshake reads the end of the stream
            try:
                spawning.kill()
            except OSError:
                pass
        with self._lock:
            self._stop()

    @property
    def pid(self):
        """The running child's pid, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _start_aside(self):
        """Starts a child on a thread of its own unless one is starting (or none may); returns that
        thread, or None. Called with the lock held."""
        if self._starting is None and self._proc is None and self.usable:
            thread = threading.Thread(target=self._start, name="trainguard-report-process-start", daemon=True)
            try:
                thread.start()
            except RuntimeError as e:  # no thread to be had (a thread limit, interpreter shutdown): in-process
                self._failed_start(e)
                return None
            self._starting = thread  # before its end can run: that needs the lock the caller holds
        return self._starting

    def _start(self):
        """On the starting thread: the new child is installed once it said READY, or the failure counted
        (and logged where the child is given up)."""
        # The settings go to a child that may already be dead. Not remembered in _sigpipe_blocked:
        # this thread is short-lived, and its id will be reused.
        _block_sigpipe_here()
        child = error = None
        try:
            self._spawning = _popen()  # published: a fork closes its pipes, close() kills it
            child = _handshake(self._spawning, self._settings, self.START_S, self.MAX_NOISE)
        except Exception as e:
            error = e
        finally:
            with self._lock:
                self._starting = self._spawning = None
                if child is not None and self.usable:
                    self._proc, self._answers = child
                    self._failed_starts = 0
                    self.starts += 1
                elif child is not None:  # closed (or forked away) while it started
                    _end(child[0])
                elif error is not None and self.usable:  # (closed: the start was ended on purpose)
                    self._failed_start(error)

    def _failed_start(self, error):
        """Counts a start that failed (with the lock held); gives the child up, once and loudly, when
        none ever came up or the last few failed."""
        self._failed_starts += 1
        if self.starts == 0 or self._failed_starts >= self.MAX_FAILED_STARTS:  # never worked, or no longer
            self.usable = False
            log.warning("trainguard: the report process could not start (%s); reports are sent from "
                        "the training process instead", _reason(error))

    def _stop(self, kill=False):
        proc, self._proc = self._proc, None
        if proc is not None:
            _end(proc, kill)

    def _abandon(self):
        """In a forked copy of the trainer: close this copy's ends of the pipes, never use the child."""
        procs = (self._proc, self._spawning)  # the running child and one still starting
        self._proc = self._spawning = None
        self.usable = False
        self._starting = None  # no thread survives a fork
        self._lock = threading.Lock()  # the parent's lock may have been held at the fork
        for f in (f for proc in procs if proc is not None for f in (proc.stdin, proc.stdout)):
            try:
                os.close(f.fileno())
            except (OSError, ValueError):
                pass

    def _block_sigpipe(self):
        """Once per writer thread (``_block_sigpipe_here``)."""
        me = threading.get_ident()
        if me not in self._sigpipe_blocked:
            _block_sigpipe_here()
            self._sigpipe_blocked.add(me)

    def _read_frame(self, timeout):
        n, status = _RESP.unpack(self._answers.read(_RESP.size, timeout))
        return status, self._answers.read(n, timeout)


def _block_sigpipe_here():
    """A writer thread with SIGPIPE blocked gets EPIPE from a dead child instead of a signal, which a
    program that restored SIGPIPE's default would die of."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPIPE})


def _reason(e):
    return str(e) or type(e).__name__


def _popen():
    return subprocess.Popen([sys.executable, "-c", _BOOT, json.dumps(sys.path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, close_fds=True)


def _handshake(proc, settings, timeout, max_noise):
    """(proc, its _Answers) once the new child said READY; stops it and raises where it does not."""
    try:
        answers = _Answers(proc.stdout.fileno())
        body = json.dumps(settings).encode()
        _write_all(proc.stdin.fileno(), _LEN.pack(len(body)), body)
        answers.skip_through(_READY, timeout, max_noise + len(_READY))
    except BaseException:
        _end(proc, kill=True)
        raise
    return proc, answers


def _end(proc, kill=False):
    """Stops a child: closing its stdin ends its read loop (``kill``: it stopped answering)."""
    try:
        if kill:
            proc.kill()
        proc.stdin.close()
        proc.wait(2.0)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    finally:
        proc.stdout.close()


def _write_all(fd, *parts):
    """Writes ``parts`` in one writev where the pipe takes them at once (one syscall per report)."""
    written = os.writev(fd, parts)
    rest = memoryview(b"".join(parts))[written:] if written < sum(map(len, parts)) else b""
    while rest:
        rest = rest[os.write(fd, rest):]


class _Answers:
    """The child's stdout, read with poll(): it releases the GIL like select() and, unlike select(),
    takes fds above 1024. Buffered: an answer's header and body normally arrive in one read."""

    CHUNK = 1 << 16

    def __init__(self, fd):
        self.fd, self._poller, self._buf = fd, select.poll(), b""
        self._poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def read(self, n, timeout):
        """``n`` bytes, each wait at most ``timeout`` s."""
        while len(self._buf) < n:
            self._more(n - len(self._buf), timeout)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def skip_through(self, marker, timeout, limit):
        """Drops everything up to and including ``marker`` (what the child's interpreter printed
        before it), reading at most ``limit`` bytes, each wait at most ``timeout`` s."""
        while (at := self._buf.find(marker)) < 0:
            if len(self._buf) > limit:
                raise OSError("the child printed too much before it was ready")
            self._more(len(marker), timeout)
        self._buf = self._buf[at + len(marker):]

    def _more(self, want, timeout):
        if not self._poller.poll(max(0, int(timeout * 1000))):
            raise TimeoutError(f"nothing within {timeout:.1f}s")
        chunk = os.read(self.fd, max(self.CHUNK, want))
        if not chunk:
            raise EOFError("end of stream")
        self._buf += chunk


def child_main(out):
    """The child: reads the settings, then request frames from stdin; makes each call and writes the
    answer to ``out``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the trainer, which closes us

    def read(n):
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(0, n - len(buf))
            if not chunk:
                raise SystemExit(0)  # the parent closed the pipe or died: nothing left to send
            buf += chunk
        return bytes(buf)

    def answer(*parts):
        try:
            _write_all(out, *parts)
        except OSError:  # the parent is gone
            raise SystemExit(0) from None

    settings = json.loads(read(_LEN.unpack(read(_LEN.size))[0]))
    transport = Transport(settings["target"], token=settings["token"])
    calls = [transport.raw(m) for m in METHODS]
    answer(_READY)
    while True:
        n, deadline, method = _REQ.unpack(read(_REQ.size))
        request = read(n)
        try:
            status, payload = OK, calls[method](request, deadline)
        except grpc.RpcError as e:
            code = grpc_code(e) or grpc.StatusCode.UNKNOWN
            status, payload = FAILED, f"{code.name}\n{e.details()}".encode("utf-8", "replace")
        except Exception as e:  # never leave the parent waiting
            status, payload = FAILED, f"UNKNOWN\n{type(e).__name__}: {e}".encode("utf-8", "replace")
        answer(_RESP.pack(len(payload), status), payload)
