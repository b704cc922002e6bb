"""Pausing, resuming and closing a Guard (its ``pause``/``resume``/``close`` call these)."""
import logging
import time
import weakref

import grpc

from . import checkpointing, scaler_share, wrap
from . import distributed as dist_agree
from .errors import TrainguardError
from .verdict import Action, Verdict
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")

#: (target, run, rank) -> the newest Guard of this process on it
_HOLDING = weakref.WeakValueDictionary()


def opened(g):
    """A Guard has opened its run: wrappers of a closed Guard over its optimizer follow it
    (wrap._Follows), and another Guard of this process still training the same run and rank is
    said. The sidecar tells Guards of one process apart from other processes (an earlier Guard that
    ended without closing the run is a retry: said as a take-over), so two live ones, two models
    under one run id, are for the client to say."""
    wrap.note_guard(g)
    g.every_rank.sidecar = dist_agree.sidecar_identity(g.transport.target)  # one rank per sidecar registers
    key = (g.transport.target, g.run, g.rank)
    earlier = _HOLDING.get(key)
    halted = earlier is not None and earlier.last_verdict is not None and earlier.last_verdict.action == Action.HALT
    if earlier is not None and earlier is not g and not earlier._closed and not halted:  # a halted one trains no more
        log.warning("trainguard: two Guards of this process train run '%s' rank %d at once (trainer instances %s and "
                    "%s): their steps would merge under one run and each would evict the other's in-memory snapshots. "
                    "Give each model its own run id, or close() the first Guard before building the second",
                    g.run, g.rank, earlier.trainer_instance, g.trainer_instance)
    _HOLDING[key] = g


def pause(g):
    if g._closed:
        return
    g.flush()
    g.gated.clear()
    if g.watch:
        g.watch.remove()
        g.watch.reset()
    g.gate.uninstall()
    if not g.connection.offline:
        g.heartbeat(g.last_step or 0, "IDLE")  # a paused trainer is not hung (HangWatch)
    g.connection.pause()


def resume(g):
    if g._closed:
        return
    if g.watch:
        g.watch.attach()
    g._step_t0 = time.perf_counter()
    if g.recovery.ring is not None:
        g.recovery.ring.pace.restart_clock()  # the pause is no step time
    g.connection.resume()
    if not g.connection.offline:
        g.heartbeat(g.last_step or 0, "STEP")


def heartbeat(g, step, phase):
    try:
        return g.transport.call("Heartbeat", pb.HeartbeatRequest(run_id=g.run, rank=g.rank, step=step,
                                                                  phase=pb.Phase.Value("PHASE_" + phase)))
    except grpc.RpcError as e:
        g.connection.unreachable("Heartbeat", e)


def ends_the_run(exc):
    """Whether training that stopped with ``exc`` (None: it finished) is over for good: finished or
    interrupted by a person. Any other exception may be followed by a restart of the same run
    (torchrun --max-restarts, a retry loop, a resubmitted job), which a closed run id would refuse:
    such a run is left open, as a crash leaves it, and resumed by the restart. So is a run the guard
    halted: it stays HALTED, for the health group, the alert and the operator's ``trainguard resume``
    (closed, none of them saw it and the restart was refused)."""
    return exc is None or isinstance(exc, KeyboardInterrupt)


def close(g, reason, close_run=True):
    if g._closed:
        return
    g._closed = True
    g.flush()
    if g.gated.last_steps_differed():  # the last step's vector is read at a next step that never comes
        log.error("trainguard: at the last step %s", dist_agree.steps_differ_message(g.last_step))
    g.gated.settle_late(wait=True)  # the last steps' skips, for the callbacks' verdicts
    settle_running_stats(g)
    g.running_stats.remove()
    g.gate.uninstall()
    g.loop_updates.remove()
    scaler_share.release(g)
    g.sender.close()
    g.recovery.registrar.close(checkpointing.register_deadline(g))  # a call in flight ends first
    if close_run:
        try:
            g.transport.call("CloseRun", pb.CloseRunRequest(run_id=g.run, rank=g.rank, reason=reason))
        except grpc.RpcError:
            pass
    else:
        log.warning("trainguard: %s; run '%s' is left open, so that a restarted trainer (torchrun --max-restarts, "
                    "a retry, a resubmitted job) resumes it with the same run id", reason, g.run)
    if g.watch:
        g.watch.remove()
    g.transport.close()
    g.counters["reports_dropped"] = g.sender.dropped


def settle_running_stats(g):
    """BatchNorm statistics written by forwards after the last judged step (a GAN's generator pass
    through D after D's step, a last step whose forward was NaN) are settled as a judged step's are
    (running_stats.py): no later step will, so a NaN written there would be what the model keeps
    and evaluates with. Nothing is dropped for a finite value: those forwards were never judged."""
    if g.running_stats and not g.connection.paused:
        g.running_stats.settle(False)


def closed_step(g, step):
    """``step()`` after ``close()``: not guarded, said once (no wait for a sidecar that was left)."""
    if not g._closed_warned:
        g._closed_warned = True
        log.warning("trainguard: guard.step(%d) after close(): the step is not guarded", step)
    verdict = Verdict(step, Action.APPLY, reasons=["guard closed"], decided_locally=True)
    # the update that follows (the wrapper's step(), optimizer_step()) obeys this verdict, not the
    # last one before close
    g.last_verdict, g.last_step, g._pending_update = verdict, step, True
    return verdict


def refuse_if_closed(g, what):
    if g._closed:
        raise TrainguardError(f"trainguard: {what} after close() (or the end of the Guard's with block): the run is "
                              f"closed; call it before closing, or save with your own code (torch.save, save_file)")
