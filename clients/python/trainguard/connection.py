"""The client's connection state machine and its failure handling.

States (``ClientState``)::

    ONLINE  --step decided on the device-->  GATED  --step decided on the host-->  ONLINE
    ONLINE/GATED --sidecar did not answer--> OFFLINE --OpenRun answered (retried every 5 s)--> ONLINE
    any --pause()--> PAUSED --resume()--> ONLINE or OFFLINE (whichever it was)

ONLINE: steps are decided locally within the sidecar's bounds or by the sidecar, on the host.
GATED: the last step went through the device gate (no host sync; the optimizer reads the flags).
OFFLINE: the sidecar is unreachable; fail-open steps are decided by the local rules (never apply a
non-finite update), fail-closed raises SidecarUnavailable. PAUSED: the guard is detached.
"""
import enum
import logging
import threading
import time
import warnings

import grpc

from .errors import RunRefused, SidecarUnavailable, TrainguardError

log = logging.getLogger("trainguard")

#: gRPC codes that mean "the sidecar did not answer", as opposed to "it answered no".
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
               grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED)
#: gRPC codes of an answer that is no trainguard's: something else serves that address, or the
#: sidecar refused the caller's token. Said in words once, like a sidecar that does not answer.
NOT_SERVED = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
REOPEN_EVERY_S = 5.0
#: opens the description of an UNAVAILABLE the sidecar sends itself (GrpcErrors.SIDECAR_ANSWERED): its
#: journal cannot record the call (a full disk), where gRPC's own UNAVAILABLE means nothing answered
SIDECAR_ANSWERED = "trainguard sidecar: "


def grpc_code(e):
    return e.code() if isinstance(e, grpc.RpcError) and hasattr(e, "code") else None


def in_words(err, deadline):
    """What a failed call means, for a person (not a gRPC debug string)."""
    code = grpc_code(err)
    details = err.details() if hasattr(err, "details") else err
    if sidecar_answered(err):
        return (f"the sidecar answered, but cannot record the call now: {str(details)[len(SIDECAR_ANSWERED):]} "
                f"(its /q/health/ready says why; the call is retried)")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ("nothing answered there (connection refused, a wrong host, port or socket path, "
                "or the sidecar is not running)")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or isinstance(err, TimeoutError):
        return (f"no answer within {deadline}s (nothing is listening there, the sidecar is overloaded, or "
                "the address reaches something that is not a trainguard sidecar)")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return (f"something answered there that is not a trainguard sidecar (the sidecar's management port, "
                f"9000 by default, serves only health and metrics; gRPC is on the main port, 7474 by default): {details}")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return (f"the sidecar refused the call's token ({details}): give the sidecar's token with "
                f"TRAINGUARD_TOKEN or TRAINGUARD_TOKEN_FILE, or connect over its Unix socket")
    if code is not None:
        return f"the call failed with {code.name}: {details}"
    return str(err)


def sidecar_answered(err):
    """Whether ``err`` is the sidecar's own UNAVAILABLE (it is up; its journal cannot record the call)."""
    details = err.details() if hasattr(err, "details") else None
    return grpc_code(err) == grpc.StatusCode.UNAVAILABLE and str(details or "").startswith(SIDECAR_ANSWERED)


def unprotected_message(run, target, err, deadline, what=None):
    answered = sidecar_answered(err)
    verb = "refused" if grpc_code(err) in NOT_SERVED else "could not record" if answered else "did not answer"
    where = f"{target} {verb} {what}" if what else target
    fix = ("Fix: give the sidecar's journal volume room (or make it writable again); the sidecar keeps serving and "
           "records again by itself" if answered else "Fix: start the sidecar, or pass target= / set TRAINGUARD_TARGET")
    return (f"trainguard: run '{run}' is NOT PROTECTED by a sidecar. {where}: {in_words(err, deadline)}. "
            f"Training goes on (failure_mode='open'); until a sidecar answers (retried every "
            f"{REOPEN_EVERY_S:.0f} s) only the client's own rule applies: non-finite updates are skipped. "
            f"Not protected meanwhile: loss and grad-norm spike detection, divergence detection, rollback to "
            f"known-good checkpoints, the validation gate, checkpoint verification, hang detection and the "
            f"incident record. {fix}; failure_mode='closed' makes this an error instead.")


class ClientState(enum.Enum):
    ONLINE = "online"
    GATED = "gated"
    OFFLINE = "offline"
    PAUSED = "paused"


_ALLOWED = {
    ClientState.ONLINE: {ClientState.GATED, ClientState.OFFLINE, ClientState.PAUSED},
    ClientState.GATED: {ClientState.ONLINE, ClientState.OFFLINE, ClientState.PAUSED},
    ClientState.OFFLINE: {ClientState.ONLINE, ClientState.PAUSED},
    ClientState.PAUSED: {ClientState.ONLINE, ClientState.OFFLINE},
}


class Connection:
    """Owns the client state and what happens when the sidecar does not answer."""

    def __init__(self, transport, failure_mode, deadline, warn_every, counters, run=None):
        self.transport, self.failure_mode, self.run = transport, failure_mode, run
        self.deadline, self.warn_every, self.counters = deadline, warn_every, counters
        self.state = ClientState.ONLINE
        self._resume_to = ClientState.ONLINE
        self._last_open_try = 0.0
        self._lost = False  # said that the sidecar stopped answering; answered() clears it
        # the training thread and the report sender both fail and succeed calls: one of them says it
        self._lost_lock = threading.Lock()

    # ---------------------------------------------------------------- state

    def to(self, new):
        if new is self.state:
            return
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"trainguard client: no transition {self.state.value} -> {new.value}")
        if ClientState.OFFLINE in (self.state, new) and ClientState.PAUSED not in (self.state, new):
            log.info("trainguard client: %s -> %s", self.state.value, new.value)
        self.state = new

    @property
    def offline(self):
        return self.state is ClientState.OFFLINE

    @property
    def paused(self):
        return self.state is ClientState.PAUSED

    def went_offline(self):
        """Stop paying the deadline every step; OpenRun is retried every REOPEN_EVERY_S."""
        if self.paused:
            self._resume_to = ClientState.OFFLINE
        else:
            self.to(ClientState.OFFLINE)
        self._last_open_try = time.monotonic()

    def reopen_due(self):
        return self.offline and time.monotonic() - self._last_open_try > REOPEN_EVERY_S

    def pause(self):
        if not self.paused:
            self._resume_to = ClientState.OFFLINE if self.offline else ClientState.ONLINE
            self.to(ClientState.PAUSED)

    def resume(self):
        if self.paused:
            self.to(self._resume_to)

    # ---------------------------------------------------------------- failures

    def unreachable(self, what, err, run=None, deadline=None):
        """Counts a call the sidecar did not answer; raises in fail-closed mode. In fail-open mode the
        first failure says in words what is unprotected (``lost``), later ones warn every
        ``warn_every`` failures."""
        self.counters["sidecar_failures"] += 1
        deadline = deadline or self.deadline
        answered = sidecar_answered(err)
        verb = "could not record" if answered else "did not answer"
        msg = f"trainguard sidecar at {self.transport.target} {verb} {what}: {in_words(err, deadline)}"
        if self.failure_mode == "closed":
            fix = ("give its journal volume room, or use failure_mode='open'" if answered
                   else "start the sidecar or use failure_mode='open'")
            raise SidecarUnavailable(msg + f" (failure_mode='closed': training stops; {fix})")
        if self.lost(what, err, run, deadline):
            return
        n = self.counters["sidecar_failures"]
        if n == 1 or n % self.warn_every == 0:
            warnings.warn(msg + f" (failure_mode='open': training goes on; {n} failures so far)", RuntimeWarning)

    def lost(self, what, err, run=None, deadline=None):
        """Fail-open: the first call the sidecar did not answer since it last did (a wrong address at
        the start, a sidecar that died mid-run, including a report sent in the background) says
        loudly and once, in words, what is unprotected. Returns whether it said so now."""
        if grpc_code(err) is not None and grpc_code(err) not in UNREACHABLE + NOT_SERVED:
            return False
        with self._lost_lock:
            if self._lost:
                return False
            self._lost = True
        words = unprotected_message(run or self.run, self.transport.target, err, deadline or self.deadline,
                                    None if what == "OpenRun" else what)
        log.error("%s", words)
        warnings.warn(words, RuntimeWarning)
        return True

    def answered(self):
        """A call was answered: the next loss of the sidecar is said again."""
        if not self._lost:  # the common case, without the lock
            return
        with self._lost_lock:
            if not self._lost:
                return
            self._lost = False
        log.warning("trainguard: the sidecar at %s answers again: run '%s' is protected again",
                    self.transport.target, self.run)

    def open_run(self, run, request, deadline):
        """Sends OpenRun. Returns the response, or None when the sidecar is unreachable (the client
        is then OFFLINE). Raises RunRefused / TrainguardError when the sidecar answers no."""
        self._last_open_try = time.monotonic()
        try:
            resp = self.transport.call("OpenRun", request, deadline=deadline)
        except grpc.RpcError as e:
            code = grpc_code(e)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise RunRefused(f"trainguard refused run '{run}': {e.details()}") from None
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS):
                raise TrainguardError(f"OpenRun for run '{run}' failed: {code.name}: {e.details()}") from None
            self.unreachable("OpenRun", e, run=run, deadline=deadline)
            self.went_offline()
            return None
        if self.offline:
            self.to(ClientState.ONLINE)
        elif self.paused:
            self._resume_to = ClientState.ONLINE
        self.answered()
        return resp
