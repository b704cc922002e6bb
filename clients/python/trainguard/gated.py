"""The device-gated step: no host sync on a healthy step.

The step's statistics stay on the device; a fused optimizer skips or clips the update in its own
kernel (``measure.DeviceGate``); with several ranks the gate is agreed in one in-stream
``all_reduce`` (``distributed.gate_collective``); the statistics reach the host later, through
pinned memory and a CUDA event, and the report is built and sent on the sender thread.

A non-finite step is skipped on the device, so its weights and optimizer state are still untouched
when the host learns of it, one step later. That is when it is replayed (``replay_previous``):
forward and backward of the faulty step again on its own batch and RNG state; a clean replay
(TRANSIENT) applies the replay's update, so no step is lost; then the current step's forward and
backward run again on the weights as they now are. Only a step that is already faulty pays for
this; a healthy step still reads nothing on the host.
"""
import collections
import logging
import math

import torch

from . import apply as apply_
from . import distributed as dist_agree
from . import rules
from .connection import ClientState
from .errors import TrainguardError
from .gate_graph import GateGraphs
from .gated_step import GatedStep
from .host_path import stepped_optimizer, unscale_once
from .late_skips import LateSkips
from .measure import skip_flag
from .protect import say_corrupt_state
from .replay import FaultClass
from .report import step_report
from .rng import restore_rng
from .stats import first_non_finite, grad_norms
from .verdict import Action, LocalBounds, Verdict

log = logging.getLogger("trainguard")


class GatedPath:
    """The device-gated step of one Guard, its multi-rank agreement and the replay of its faults."""

    def __init__(self, guard, multi, sharded):
        self.g = guard
        self.multi = multi           # several ranks: the gate is agreed in one in-stream all_reduce
        self.sharded = sharded       # FSDP/ZeRO: the global norm is the root of the sum of squares
        self.host_next = False       # several ranks: they agreed that the next step takes the host path
        self.prev = None             # several ranks: (host copy of the reduced vector, event) of the last step
        self.prev_faulty = False     # several ranks: whether they agreed that the last step was non-finite
        self.futs = collections.deque()  # reports not yet answered
        self.last = None             # the last gated step (GatedStep), until the next step looked at it
        self._graphs = None          # one rank: the measure-and-gate kernels as a CUDA graph (gate_graph)
        self._entries = None         # several ranks: this rank's clip threshold and step for the collective (RankEntries)
        self.late = LateSkips()      # the device's skips as the host learns of them (LR schedule, callbacks)

    @property
    def graphs(self):
        if self._graphs is None:
            g = self.g
            self._graphs = GateGraphs(g.meter, g.gate, g.optimizer, g.device)
        return self._graphs

    def clear(self):
        """A pause: what the device did so far is learned (the reports were flushed), then forgotten."""
        self.settle_late(wait=True)
        self.late.forget_unknown()
        self.futs.clear()
        self.last = None

    def settle_late(self, wait=False):
        """Learns the device's skips that are known by now (late_skips); at each step, after a replay."""
        self.late.settle(self.g.generation, wait)

    # ------------------------------------------------------------------ before the step

    def await_verdicts(self, step, act_on_timeout=True):
        """Waits (at most ``deadline``) until the reports of steps <= step - verdict_lag have their
        verdicts, so that a ROLLBACK/HALT for step k-1 is applied at step k. ``act_on_timeout=False``
        (backward_gate, ahead of ``step()``): a timeout only ends the wait; ``step()`` acts on it.
        Returns False on a timeout."""
        g, futs = self.g, self.futs
        while futs and futs[0].done():
            futs.popleft()
        if g.verdict_lag is None:
            return True
        while futs and futs[0].step <= step - g.verdict_lag:
            fut = futs[0]
            if not fut.done():
                g.sender.release()  # a held report is needed now
            if not fut.wait(g.deadline + 0.05):
                if act_on_timeout:
                    futs.clear()
                    g.connection.went_offline()
                    g.connection.unreachable("ReportStep", TimeoutError(f"no verdict for step {fut.step} within {g.deadline}s"))
                return False
            futs.popleft()
        return True

    def last_steps_differed(self):
        """At close: whether the ranks numbered the last gated step differently (its vector is read at the
        next step, which never comes): the device skipped its update on every rank."""
        if self.prev is None:
            return False
        vec, event = self.prev
        if event is not None:
            event.synchronize()
        return dist_agree.steps_differ(vec.tolist(), self.g.world_size)

    def agreed_host_path(self):
        """Several ranks: whether they agreed (on the device, in the last step's collective, or in
        the last host step's agreement) that this step takes the host path."""
        prev, self.prev = self.prev, None
        self.prev_faulty = False
        if prev is None:
            return self.host_next
        vec, event = prev
        if event is not None:
            event.synchronize()  # the last step's collective; normally long done
        values = vec.tolist()
        if dist_agree.steps_differ(values, self.g.world_size):
            raise TrainguardError(dist_agree.steps_differ_message(self.last.step if self.last is not None else None))
        self.prev_faulty, need, spread = dist_agree.reduced_flags(values, self.g.world_size, self.sharded)
        if self.last is not None and self.last.multi:  # the step the vector is of: what the device did to it
            self.last.agreed_skip = self.prev_faulty or dist_agree.norms_disagree(spread)
        self.host_next = need
        return need

    # ------------------------------------------------------------------ the step

    def step(self, step, loss, step_time, need_host=False, replay=None):
        """A step with no host sync: measure on the device, gate the optimizer on the device (with
        several ranks: agreed in one in-stream all_reduce), hand the stats to the sender thread
        through pinned memory and a CUDA event."""
        g = self.g
        bounds = g.bounds or LocalBounds()
        g.counters["device_gated_steps"] += 1
        if not g.connection.offline:  # several ranks: an offline rank still gates (and asks for the host path)
            g.connection.to(ClientState.GATED)
        thr = rules.gate_threshold(bounds)
        scaler = g.scaler if g.scaler_on else None
        if scaler is not None:
            unscale_once(g)  # true gradients for the norms (in place, on the device)
        if self.multi:
            stats, total, ng, names = g.meter.on_device(loss)
            bad = skip_flag(stats, 2 + ng)
            skip, norm, inverse, vec = dist_agree.gate_collective(bad, g.gate.flag(need_host), total, self.sharded,
                                                                  self._rank_entries(thr, step))
            clip = g.gate.install_agreed(skip, norm, inverse)
            early = None
        else:
            early = g.backward_gate.take(loss, thr)  # measured when backward ended (gate_on_backward)
            if early is not None:  # no GradScaler there; its statistics are already on their way to the host
                ng, names, (hosts, event), clip = early
            else:
                stats, ng, names, clip = self.graphs.measure_and_install(loss, thr)  # one graph launch where it can
            vec = None
        if clip is not None:  # the gradients divided in place, before anything else reads them
            clip()
        if scaler is not None:
            scaler_skips_too(g)
        if early is None:
            staged = [stats] + ([vec] if vec is not None else []) + ([g.meter._scale()] if scaler is not None else [])
            hosts, event = g.gate.stage(*staged)
        host, host_vec = hosts[0], (hosts[1] if vec is not None else None)
        host_scale = hosts[-1] if scaler is not None else None
        if self.multi:
            self.prev = (host_vec, event)
        # The LRs this step runs at, for a replayed update. A tensor LR is kept by reference (a copy
        # would be a kernel on every healthy step): a scheduler that changes it in place makes a
        # replayed update run at the next step's LR.
        lrs = [grp.get("lr", 0.0) for grp in g.optimizer.param_groups]
        lr = lrs[0] if lrs else 0.0
        lr = g.recovery.lr.effective(float(lr)) if not torch.is_tensor(lr) or lr.device.type == "cpu" else 0.0
        absent = loss is None

        def build():  # on the sender thread
            # Normally the copy has landed by now. Then no synchronize(): it drops the GIL and, in a
            # launch-bound loop, getting it back can take the interpreter's whole switch interval.
            if event is not None and not event.query():
                event.synchronize()  # blocks in C without the GIL
            return self._report(step, host.tolist(), ng, names, lr, step_time, thr, bounds, absent,
                                None if host_vec is None else host_vec.tolist(),
                                0.0 if host_scale is None else float(host_scale.reshape(-1)[0]))

        # Measured at backward's end: the loop reads the loss on the host before step(), so the
        # report waits for the next backward, when the training thread is off the GIL (ReportSender).
        self.futs.append(g.sender.submit_deferred(step, build, g.generation, hold=early is not None))
        verdict = Verdict(step, Action.APPLY, clip_threshold=thr, validation_allowed=g._validation_hint,
                          bounds=bounds, decided_locally=True, device_gated=True)
        rec = g.recovery
        self.last = GatedStep(step, verdict, host, event, ng, names, thr, lrs, g.generation,
                              replay_fn=replay, rng=rec.step_rng(), position=rec.position(),
                              scaled=scaler is not None, multi=self.multi, loss_absent=absent)
        self.late.watch(self.last)
        return verdict

    def _rank_entries(self, thr, step):
        if self._entries is None:
            self._entries = dist_agree.RankEntries(self.g.device, self.g.world_size)
        return self._entries.of(thr, step)

    def _report(self, step, vals, ng, names, lr, step_time, thr, bounds, absent, reduced=None, loss_scale=0.0):
        g = self.g
        loss_v, gnorm = vals[0], vals[1]
        mods = vals[2 + ng:]
        finite, clipped, in_bounds = rules.gated_outcome(loss_v, gnorm, mods, thr, bounds)  # = the device's gate
        # the GradScaler's own overflow (scale too high): its business, as on the host path
        overflow = loss_scale > 0 and rules.is_scaler_overflow(True, loss_v, gnorm, mods)
        locally_finite = finite
        if reduced is not None:  # several ranks: the device acted on what they agreed
            any_bad, _, spread = dist_agree.reduced_flags(reduced, g.world_size, self.sharded)
            if self.sharded and finite:
                gnorm = math.sqrt(reduced[2])  # the global norm, as FSDP's clip_grad_norm_ computes it
            mismatch = dist_agree.norms_disagree(spread)
            steps_apart = dist_agree.steps_differ(reduced, g.world_size)  # skipped on the device; raised next step
            if mismatch:
                with g._lock:
                    g.counters["grad_norm_mismatches"] += 1
                log.warning("trainguard: step %d: the ranks' grad norms differ (relative spread %.3g) although "
                            "DDP gives every rank the same gradients: silent data corruption or a rank out of "
                            "step; the update was skipped on every rank", step, spread)
            finite = finite and not any_bad and not mismatch and not steps_apart
            thr = dist_agree.agreed_threshold(reduced)  # what every rank clipped by
            clipped = finite and thr > 0 and gnorm > thr
            in_bounds = rules.within_bounds(bounds, loss_v, gnorm)
        skipped_together = locally_finite and not finite  # on another rank's account (or the norms')
        with g._lock:
            if not finite:
                g.counters["skips"] += 1
            elif clipped:
                g.counters["clips"] += 1
            if finite and in_bounds:
                g.counters["local_decisions"] += 1
        if clipped:
            log.info("trainguard: step %d %s", step, rules.clip_reason(
                gnorm, thr, "on the device: the run's clip policy or the spike bound beyond which the sidecar is asked"))
        if overflow and reduced is None:
            log.info("trainguard: step %d: GradScaler overflow at scale %g: the update was skipped on the device and "
                     "the scaler lowers its scale", step, loss_scale)
        elif skipped_together:
            log.warning("trainguard: step %d: another rank saw a non-finite value or the norms disagreed: the update "
                        "was skipped on every rank", step)
        elif not finite:
            bad = first_non_finite(names, [math.isfinite(x) for x in mods])
            log.warning("trainguard: step %d non-finite (loss=%s, grad norm=%s%s): the update was skipped on the "
                        "device; the sidecar decides what follows", step, "absent" if absent else loss_v, gnorm,
                        f", first non-finite module call {bad}" if bad else "")
        return step_report(g.run, g.rank, step, loss=loss_v, grad_norm=gnorm, group_norms=vals[2:2 + ng],
                           learning_rate=lr, step_time=step_time, loss_absent=absent, module_names=names,
                           module_values=mods, loss_scale=loss_scale,
                           # a finite step's update was applied on the device (clipped to the spike
                           # bound beyond it): the sidecar cannot skip it any more, and records it so
                           decided_locally=(finite and not skipped_together) or overflow,
                           applied_clip_threshold=thr if clipped and not skipped_together else 0.0,
                           skipped_by_agreement=skipped_together)

    # ------------------------------------------------------------------ replaying the last step's fault

    def replay_previous(self, step, loss, replay, suppress):
        """At each step on a device-gated Guard, before it is decided: replays the last gated step if it
        was faulty (``_replay_last``), then learns the device's skips known by now (late_skips)."""
        loss = self._replay_last(step, loss, replay, suppress)
        self.settle_late()
        return loss

    def _replay_last(self, step, loss, replay, suppress):
        """At step k+1: when the gated step k was non-finite (on any rank), replay it, classify the
        fault and, for TRANSIENT, apply the replay's update; then run this step's forward and
        backward again (``replay``) on the weights as they now are. Returns the loss to judge this
        step by (``loss`` when nothing was replayed). ``suppress``: a ROLLBACK/HALT arrived, which
        the replay would not change. Every rank reaches the same decision (the fault flag is the
        ranks' agreed one; the rest is agreed in one small all_reduce, on faulty steps only)."""
        rec, self.last = self.last, None
        g, rcv = self.g, self.g.recovery
        if rec is None or rcv.replay_policy.mode == "off" or rec.generation != g.generation:
            return loss
        if self.multi:
            if not self.prev_faulty:  # read from the same collective by agreed_host_path(), this step
                return loss
        elif not rec.ready() or rec.finite():
            # not ready: the host does not know yet (verdict_lag=None and the device is behind), and
            # waiting would be a host sync on a step that may be healthy
            return loss
        fault = rec.fault()
        if not rec.scaled:  # a GradScaler's overflow is its calibration, not a corrupted state
            say_corrupt_state(g, rec.step)  # its update was skipped on the device: the state is as before it
        able = rec.replay_fn is not None and replay is not None and rec.rng is not None
        if not rcv.should_replay(rec.step, fault, able, suppress, wants=True,
                                 why_unable="pass guard.step(..., replay=fn) at the faulty step and the step after it "
                                            "(on the device gate a fault is replayed one step later)"):
            return loss
        opt = g.optimizer
        opt.zero_grad(set_to_none=True)
        if g.watch:
            g.watch.reset()  # this step's forward statistics: this step runs again below
        restore_rng(rec.rng)
        m2 = g.meter.read(rec.replay_fn())  # a host read, on a faulty step only
        cls = rcv.classify_replay(rec.step, fault, m2, rec.position)
        rec.verdict.fault_class = cls.name
        if cls == FaultClass.TRANSIENT:
            self._apply_replayed(rec)
            rec.update_applied = True
        opt.zero_grad(set_to_none=True)
        if g.watch:
            g.watch.reset()
        restore_rng(rcv.step_rng())  # the RNG state this step began with
        return replay()

    def _apply_replayed(self, rec):
        """Applies the replay's update of step ``rec.step``, gated and clipped as that step would
        have been, at the LR it ran at (the scheduler has moved on since)."""
        g = self.g
        opt = g.optimizer
        total, _ = grad_norms([grp["params"] for grp in opt.param_groups], g.device)
        if self.multi:
            bad = torch.logical_not(torch.isfinite(total))
            skip, norm, inverse, _ = dist_agree.gate_collective(bad, g.gate.flag(False), total, self.sharded,
                                                                self._rank_entries(rec.threshold, rec.step))
            clip = g.gate.install_agreed(skip, norm, inverse)
        else:
            clip = g.gate.install(total.reshape(1), total, rec.threshold)
        if clip is not None:
            clip()
        now = [grp.get("lr") for grp in opt.param_groups]
        for grp, lr in zip(opt.param_groups, rec.lrs):
            grp["lr"] = lr
        try:
            apply_.run_update(g, Verdict(rec.step, Action.APPLY), opt.step)
        finally:
            for grp, lr in zip(opt.param_groups, now):
                grp["lr"] = lr
            g.gate.uninstall()
        g.recovery.counters["replayed_updates"] += 1
        log.warning("trainguard: step %d: the replay's update was applied (TRANSIENT fault; no step lost)", rec.step)


def scaler_skips_too(guard):
    """Under a GradScaler: ORs the gate's skip flag into the scaler's found-inf record of this
    iteration (on the device), which GradScaler.step hands a fused optimizer as ``found_inf``, since
    it replaces whatever ``found_inf`` the optimizer had. The scaler's update() then also sees the
    skip and lowers its scale once, as for an overflow."""
    state = guard.scaler._per_optimizer_states[id(stepped_optimizer(guard))]
    per_device = state["found_inf_per_device"]
    found, _ = guard.gate.buffers()
    flag = per_device.get(found.device)
    if flag is None:  # no gradient on the gate's device: any device's record carries it
        flag = next(iter(per_device.values()))
    torch.maximum(flag, found.to(flag.device, non_blocking=True), out=flag)


# GradScaler.step keeps an optimizer's own grad_scale (the gate's clip divisor) once the gradients are
# unscaled only from torch 2.4 (pytorch#123429); before, it sets grad_scale to None and the clip is lost.
GRAD_SCALER_KEEPS_CLIP = torch.torch_version.TorchVersion(torch.__version__) >= (2, 4)


def gate_wanted(guard, device_gate):
    """Whether ``guard`` runs healthy steps on the device gate: ``device_gate`` "auto" (on CUDA
    where possible), True (wherever possible, the CPU included; raises where impossible) or False."""
    from .measure import optimizer_honours_gate
    g = guard
    ok = (g.mode == "async" and optimizer_honours_gate(g.optimizer) and not g.protect_update
          and (g.world_size == 1 or dist_agree.is_initialized()) and (GRAD_SCALER_KEEPS_CLIP or not g.scaler_on))
    if device_gate is True and not ok:
        raise ValueError("device_gate=True needs mode='async', an optimizer that honours found_inf/grad_scale "
                         "(fused=True Adam/AdamW/SGD), no protect_update, with a GradScaler torch >= 2.4 and, "
                         "with several ranks, torch.distributed initialised")
    return ok and (device_gate is True or (device_gate == "auto" and g.device.type == "cuda"))
