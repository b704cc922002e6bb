"""Guard: one object per rank that reports every step to the sidecar and applies its verdict.

Per step (between ``loss.backward()`` and ``optimizer.step()``)::

    verdict = guard.step(step, loss)   # measures, decides (locally or with the sidecar), applies
    guard.optimizer_step()             # steps optimizer/scaler/scheduler only if the verdict allows

``Guard`` is a façade: measuring is in ``measure``, the local decision rules in ``rules``, the
StepReport in ``report``, applying verdicts in ``apply`` / ``rollback`` / ``protect``, checkpoints
in ``checkpointing``, the client state machine in ``connection``, gRPC in ``transport``. See the
module map in ``trainguard/__init__.py`` and docs/client.md for the design and its guarantees.
"""
import collections
import contextlib
import logging
import math
import os
import socket
import threading
import time
import uuid

import grpc
import torch

from . import apply as apply_
from . import checkpointing
from . import distributed as dist_agree
from . import rollback as rollback_
from . import rules
from .connection import ClientState, Connection
from .errors import NonFiniteUpdate, SidecarUnavailable  # noqa: F401  (NonFiniteUpdate: public here)
from .measure import DeviceGate, StepMeter, optimizer_honours_gate
from .protect import UpdateProtector
from .recovery import Recovery
from .report import step_report
from .run_setup import build_policy, open_request  # noqa: F401  (build_policy: public here)
from .stats import ModuleWatch, auto_watch, first_non_finite
from .transport import ReportSender, Transport
from .validation import ValidationContext
from .verdict import Action, LocalBounds, Verdict
from .wrap import GuardedOptimizer, GuardedScheduler, ParametersOnly
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")


class Guard:
    """Guards one rank's training loop. See the module docstring and docs/client.md.

    Args:
      model, optimizer: the training model and its optimizer. ``optimizer=None``: a manual update
        loop (``if guard.step(i, loss).should_step: <update the weights>``).
      run: the run id; all ranks of one run pass the same id.
      target: "host:port" or "unix:///path/to.sock"; default $TRAINGUARD_TARGET (set by the k8s
        manifests), else "127.0.0.1:7474".
      scheduler, scaler: an LR scheduler and a GradScaler, when used.
      watch: module names whose forward output is watched (finite, max |x|), "auto" (the model's
        blocks) or None.
      deadline: seconds any call to the sidecar may take before the failure mode applies.
      failure_mode: "open" (train on, warn, count) or "closed" (raise SidecarUnavailable).
      mode: "async" (healthy steps decided locally with the sidecar's LocalBounds, report sent in
        the background) or "sync" (every step waits for the sidecar's verdict).
      policy: Policy overrides, e.g. {"clip_mode": "FIXED", "clip_threshold": 1.0}.
      protect_update: check the weights after optimizer.step() and undo a non-finite update.
        "auto" turns it on for low-precision parameters without fp32 master weights.
      device_gate: "auto" (default): on CUDA, with an optimizer that honours ``found_inf`` and
        ``grad_scale`` (fused Adam/AdamW/SGD), mode="async", no GradScaler, no protect_update and a
        single rank, healthy steps run with no host sync: the skip flag and the clip factor are
        computed on the device and the optimizer's fused kernel applies them; the stats reach the
        host through pinned memory and the report is sent from the sender thread. False: never.
        True: wherever the optimizer allows it, also on the CPU (tests).
      grad_sync: several ranks on the device gate: "replicated" (DDP: every rank holds the same
        gradients; the ranks' norms must agree, else the step is skipped as corrupted), "sharded"
        (FSDP/ZeRO: the global norm is the square root of the sum of the ranks' squared norms) or
        "auto" (replicated for a DistributedDataParallel model, else sharded).
      verdict_lag: with the device gate, ``step(k)`` first waits (at most ``deadline``) for the
        sidecar's verdict on step ``k - verdict_lag``, so a ROLLBACK/HALT for step k-1 is applied at
        step k. Normally the verdict is already there. None: never wait (verdicts apply when they
        arrive).
      snapshots: in-memory known-good snapshots (trainguard.snapshot.SnapshotPolicy, a dict of its
        fields, True = defaults, False = off). Default: every 25 healthy steps, 2 slots, states up
        to 8 GiB per slot.
      replay: fault replay (trainguard.replay.ReplayPolicy, a dict, True = defaults: non-finite
        steps, at most 4 per 1000 steps; False = off). Needs ``step(..., replay=fn)``.
      lr_restore: after a rollback's LR cut (trainguard.lrcut.LrPolicy or a dict): lift the cut after
        ``restore_after`` healthy steps over ``restore_steps`` steps. Default: keep the cut.
    """

    def __init__(self, model, optimizer, run, *, target=None, scheduler=None, scaler=None,
                 watch="auto", deadline=0.5, failure_mode="open", mode="async", policy=None,
                 rank=None, world_size=None, open_deadline=None, protect_update="auto",
                 master_weights=False, autocast_dtype=None, clipping_configured=False,
                 framework="torch", trainer_instance=None, warn_every=100, device_gate="auto",
                 verdict_lag=1, grad_sync="auto", snapshots=True, replay=True, lr_restore=None):
        if failure_mode not in ("open", "closed"):
            raise ValueError('failure_mode must be "open" or "closed"')
        if mode not in ("async", "sync"):
            raise ValueError('mode must be "async" or "sync"')
        if device_gate not in ("auto", True, False):
            raise ValueError('device_gate must be "auto", True or False')
        if grad_sync not in ("auto", "replicated", "sharded"):
            raise ValueError('grad_sync must be "auto", "replicated" or "sharded"')
        if optimizer is None:
            optimizer = ParametersOnly(model)
        self.model, self.optimizer, self.run = model, optimizer, run
        self.scheduler, self.scaler = scheduler, scaler
        self.failure_mode, self.mode = failure_mode, mode
        self.deadline = float(deadline)
        self.policy_overrides = dict(policy or {})
        if dist_agree.is_initialized():
            rank = dist_agree.rank() if rank is None else rank
            world_size = dist_agree.world_size() if world_size is None else world_size
        self.rank, self.world_size = rank or 0, world_size or 1
        self.trainer_instance = trainer_instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.master_weights, self.autocast_dtype = master_weights, autocast_dtype
        self.clipping_configured, self.framework = clipping_configured, framework

        params = list(model.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        low = any(p.requires_grad and p.dtype in (torch.float16, torch.bfloat16) for p in params)
        self.protect_update = (low and not master_weights) if protect_update == "auto" else bool(protect_update)
        gate_ok = (mode == "async" and optimizer_honours_gate(optimizer)
                   and not self.protect_update and not (scaler is not None and scaler.is_enabled())
                   and (self.world_size == 1 or dist_agree.is_initialized()))
        if device_gate is True and not gate_ok:
            raise ValueError("device_gate=True needs mode='async', an optimizer that honours found_inf/grad_scale "
                             "(fused=True Adam/AdamW/SGD), no GradScaler, no protect_update and, with several "
                             "ranks, torch.distributed initialised")
        self.device_gate = gate_ok and (device_gate is True or (device_gate == "auto" and self.device.type == "cuda"))
        self.verdict_lag = verdict_lag
        if grad_sync == "auto":
            ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
            grad_sync = "replicated" if ddp else "sharded"
        self.grad_sync = grad_sync
        self._multi_gate = self.device_gate and self.world_size > 1
        self._host_next = False      # multi-rank gate: the ranks agreed that the next step takes the host path
        self._gate_prev = None       # multi-rank gate: (host copy of the reduced vector, event) of the last step
        names = auto_watch(model) if watch == "auto" else list(watch or [])
        reduce = "sum" if (self.device.type == "cuda" or self.device_gate) else "amax"
        self.watch = ModuleWatch(model, names, reduce=reduce) if names else None

        # Counters and state that round-trip through state_dict().
        self.counters = {"steps": 0, "local_decisions": 0, "sidecar_verdicts": 0, "sidecar_failures": 0,
                         "skips": 0, "clips": 0, "rollbacks": 0, "reports_dropped": 0, "validation_incidents": 0,
                         "device_gated_steps": 0, "grad_norm_mismatches": 0}
        self.bounds = None
        self.generation = 0
        self.checkpoints = {}  # step -> {"dir", "files", "checkpoint_id", "data_position"}
        self.last_verdict = None
        self.last_step = None
        self.findings = []
        self.resumed = False

        self._lock = threading.Lock()
        self._late = None            # ROLLBACK/HALT verdict that arrived for an async report
        self._async_error = None     # fail-closed: an async report failed
        self._validation_hint = False
        self._unscaled = False
        self._step_t0 = time.perf_counter()
        self._applied_rollbacks = set()
        self._gate_futs = collections.deque()  # device-gated reports not yet answered
        self._wrapped = None         # the GuardedOptimizer handed out by wrap(), if any
        #: callable(path, RollbackPlan) that restores a checkpoint written by a framework (set by the
        #: Lightning / HF integrations); None: load_checkpoint(), the Guard's own format.
        self.restore_hook = None
        self._pending_update = False  # a step() verdict no optimizer update has consumed yet

        self.meter = StepMeter(optimizer, self.device, scaler, self.watch)
        self.gate = DeviceGate(optimizer, self.device)
        self.protector = UpdateProtector(model, optimizer, self.watch, self._ship_bad_tensor)
        self.recovery = Recovery(self, snapshots, replay, lr_restore)
        # The manifests set TRAINGUARD_TARGET (the pod's socket); an explicit target wins.
        target = target or os.environ.get("TRAINGUARD_TARGET") or "127.0.0.1:7474"
        self.transport = Transport(target, deadline)
        self.connection = Connection(self.transport, failure_mode, self.deadline, warn_every, self.counters)
        self._open_run(open_deadline if open_deadline is not None else max(10.0, self.deadline))
        self.sender = ReportSender(self.transport, self._on_report_result)

    @property
    def state(self):
        """The client's ClientState: online, gated, offline or paused."""
        return self.connection.state

    # ------------------------------------------------------------------ the sidecar's answers

    def _open_run(self, deadline):
        resp = self.connection.open_run(self.run, open_request(self), deadline)
        if resp is None:
            return
        self.findings = [(f.code, pb.Severity.Name(f.severity), f.message) for f in resp.findings]
        for code, sev, msg in self.findings:
            log.warning("trainguard pre-flight %s %s: %s", sev, code, msg)
        self.resumed = resp.resumed
        self.recovery.opened(resp)
        if resp.HasField("bounds"):
            self.bounds = LocalBounds.from_proto(resp.bounds)

    def _on_report_result(self, fut):
        """Runs on the sender thread when a report's verdict (or error) arrives."""
        if fut.error is not None:
            if not fut.blocking:
                with self._lock:
                    self.counters["sidecar_failures"] += 1
                    if self.failure_mode == "closed" and self._async_error is None:
                        self._async_error = fut.error
            return
        v = fut.response.verdict
        with self._lock:
            if v.HasField("bounds"):
                self.bounds = LocalBounds.from_proto(v.bounds)
            self._validation_hint = v.validation_allowed
            if not fut.blocking and fut.generation == self.generation and v.action in (Action.ROLLBACK, Action.HALT):
                late = Verdict.from_proto(v)
                if self._late is None or late.action > self._late.action:
                    self._late = late

    def _void_in_flight(self):
        """After a rollback: verdicts still in flight for pre-rollback steps no longer apply."""
        with self._lock:
            self.generation += 1
            self._late = None

    def _ask_sidecar(self, report, step, loss_v, gnorm, finite):
        fut = self.sender.submit(report, self.generation, blocking=True)
        # Earlier async reports are ahead of it in the queue; the deadline covers the whole wait.
        if fut.wait(self.deadline + 0.05) and fut.error is None:
            self.counters["sidecar_verdicts"] += 1
            v = Verdict.from_proto(fut.response.verdict)
            if v.action == Action.CLIP and not v.reasons:
                v.reasons = [rules.clip_reason(gnorm, v.clip_threshold, "the sidecar's clip policy")]
            return v
        err = fut.error or TimeoutError(f"no verdict within {self.deadline}s")
        self.connection.went_offline()
        try:
            self.connection.unreachable("ReportStep", err)
        except SidecarUnavailable as e:
            return Verdict(step, Action.HALT, reasons=[str(e)], degraded=True), e
        return self._decide_offline(step, gnorm, finite)

    def _decide_offline(self, step, gnorm, finite):
        if self.failure_mode == "closed":
            raise SidecarUnavailable(f"trainguard sidecar at {self.transport.target} is unreachable "
                                     f"(failure_mode='closed')")
        thr = (self.bounds.clip_threshold if self.bounds else 0.0) or float(self.policy_overrides.get("clip_threshold", 0.0))
        return rules.decide_offline(step, gnorm, finite, thr)

    def _ship_bad_tensor(self, step, name, p):
        t = p.detach().float().cpu().contiguous()
        raw = pb.RawTensor(name=f"{name} (after optimizer.step, undone)", dtype=pb.D_TYPE_FLOAT32,
                           shape=list(t.shape), data=t.reshape(-1).numpy().tobytes() if t.numel() else b"")
        try:
            self.transport.call("InspectTensors", pb.InspectTensorsRequest(run_id=self.run, rank=self.rank, step=step,
                                                                          tensors=[raw]))
        except grpc.RpcError as e:
            log.warning("trainguard: could not ship the bad update to the sidecar: %s",
                        e.details() if hasattr(e, "details") else e)

    # ------------------------------------------------------------------ per step

    def step(self, step, loss, replay=None, data_position=None):
        """Measures this step, gets its verdict (locally or from the sidecar), applies it, returns it.

        ``replay``: a callable that runs forward and backward on this step's batch again and returns
        the loss; a faulty step is then replayed once to classify the fault (docs/client.md,
        Recovery). ``data_position``: where the data stands after this step's batch (default
        step + 1); in-memory snapshots record it."""
        self.recovery.begin(step, data_position)
        now = time.perf_counter()
        step_time, self._step_t0 = now - self._step_t0, now
        self.counters["steps"] += 1
        if self.connection.paused:  # detached: the step is neither measured nor judged
            return self._finish(step, Verdict(step, Action.APPLY, reasons=["guard paused"], decided_locally=True))
        if self.connection.reopen_due():
            self._open_run(self.deadline)
        if self.device_gate:
            self._await_verdicts(step)
        with self._lock:
            late, self._late = self._late, None
            async_err, self._async_error = self._async_error, None
        if self._multi_gate and not self._agreed_host_path():
            # Every rank takes the same path (agreed one step ahead); what this rank needs the sidecar
            # for waits one step, and the ranks then take the host path together.
            need = (late is not None or async_err is not None or self.connection.offline
                    or self.bounds is None or not self.bounds.usable(step + 1))
            with self._lock:
                if late is not None and (self._late is None or late.action > self._late.action):
                    self._late = late
                if async_err is not None and self._async_error is None:
                    self._async_error = async_err
            return self._step_gated(step, loss, step_time, need_host=need)
        if (not self._multi_gate and self.device_gate and late is None and async_err is None and not self.connection.offline
                and self.bounds is not None and self.bounds.usable(step)):
            return self._step_gated(step, loss, step_time)
        if self.device_gate:
            self.gate.uninstall()  # this step is decided on the host: no stale device flag may gate it
            if self.connection.state is ClientState.GATED:
                self.connection.to(ClientState.ONLINE)
        if async_err is not None:
            err = None
            try:
                self.connection.unreachable("ReportStep", async_err)
            except SidecarUnavailable as e:
                err = e
            self._finish(step, Verdict(step, Action.HALT, reasons=[str(err)]), error=err)
        return self._step_host(step, loss, step_time, late, replay)

    def _step_host(self, step, loss, step_time, late, replay=None):
        scaler_on = self.scaler is not None and self.scaler.is_enabled()
        if scaler_on:
            self._unscale_once()
        m = self.meter.read(loss)
        # Called on every host-path step (also with a late verdict, which suppresses the replay):
        # with several ranks it runs a collective that every rank must join.
        m, fault_class = self.recovery.maybe_replay(step, m, replay, self.meter, suppress=late is not None)
        finite = math.isfinite(m.loss) and math.isfinite(m.grad_norm) and all(math.isfinite(x) for x in m.module_values)
        report = step_report(self.run, self.rank, step, loss=m.loss, grad_norm=m.grad_norm,
                             group_norms=m.group_norms, learning_rate=float(self.optimizer.param_groups[0].get("lr", 0.0)),
                             step_time=step_time, loss_absent=loss is None, module_names=m.module_names,
                             module_values=m.module_values, values_are_max_abs=self._watch_sends_max_abs(),
                             loss_scale=m.loss_scale)
        scaler_overflow = rules.is_scaler_overflow(scaler_on, m.loss, m.grad_norm)
        offline = self.connection.offline
        if late is not None:
            verdict = late  # a ROLLBACK/HALT for an earlier step: this step's update is dropped too
        elif scaler_overflow or (self.mode == "async" and not offline
                                 and rules.may_decide_locally(self.bounds, step, m.loss, m.grad_norm, finite)):
            self.counters["local_decisions"] += 1
            verdict = rules.decide_locally(step, m.grad_norm, self.bounds, scaler_overflow, self._validation_hint)
            report.decided_locally = True
            self.sender.submit(report, self.generation, blocking=False)
        elif offline:
            verdict = self._decide_offline(step, m.grad_norm, finite)
        else:
            verdict = self._ask_sidecar(report, step, m.loss, m.grad_norm, finite)
        if fault_class is not None:
            v = verdict[0] if isinstance(verdict, tuple) else verdict
            v.fault_class = fault_class.name
        return self._finish(step, verdict, gnorm=m.grad_norm)

    def _unscale_once(self):
        """Unscales the gradients for the GradScaler unless the loop (or GradScaler.step on the
        wrapper) already did in this iteration; keyed by the object the loop steps, so that
        ``scaler.step(opt)`` on the wrapper does not unscale a second time."""
        target = self._wrapped if self._wrapped is not None else self.optimizer
        st = getattr(self.scaler, "_per_optimizer_states", {})
        st = st.get(id(target)) if hasattr(st, "get") else None
        if st is None or getattr(st.get("stage"), "name", "READY") == "READY":
            self.scaler.unscale_(target)
        self._unscaled = True

    def _watch_sends_max_abs(self):
        return self.watch is None or self.watch.reduce == "amax"

    # ------------------------------------------------------------------ the device gate (no host sync)

    def _await_verdicts(self, step):
        """Waits (at most ``deadline``) until the device-gated reports of steps <= step - verdict_lag
        have their verdicts, so that a ROLLBACK/HALT for step k-1 is applied at step k."""
        futs = self._gate_futs
        while futs and futs[0].done():
            futs.popleft()
        if self.verdict_lag is None:
            return
        while futs and futs[0].step <= step - self.verdict_lag:
            fut = futs[0]
            if not fut.wait(self.deadline + 0.05):
                futs.clear()
                self.connection.went_offline()
                self.connection.unreachable("ReportStep", TimeoutError(f"no verdict for step {fut.step} within {self.deadline}s"))
                return
            futs.popleft()

    def _agreed_host_path(self):
        """Multi-rank gate: whether the ranks agreed (on the device, in the last step's collective, or
        in the last host step's agreement) that this step takes the host path."""
        prev, self._gate_prev = self._gate_prev, None
        if prev is None:
            return self._host_next
        vec, event = prev
        if event is not None:
            event.synchronize()  # the last step's collective; normally long done
        _, need, _ = dist_agree.reduced_flags(vec.tolist(), self.world_size, self.grad_sync == "sharded")
        self._host_next = need
        return need

    def _step_gated(self, step, loss, step_time, need_host=False):
        """A step with no host sync: measure on the device, gate the optimizer on the device (with
        several ranks: agreed in one in-stream all_reduce), hand the stats to the sender thread
        through pinned memory and a CUDA event."""
        bounds = self.bounds or LocalBounds()
        self.counters["device_gated_steps"] += 1
        if not self.connection.offline:  # several ranks: an offline rank still gates (and asks for the host path)
            self.connection.to(ClientState.GATED)
        stats, total, ng, names = self.meter.on_device(loss)
        thr = rules.gate_threshold(bounds)
        if self._multi_gate:
            bad = torch.logical_not(torch.isfinite(stats).all())
            skip, norm, vec = dist_agree.gate_collective(bad, self.gate.flag(need_host), total,
                                                         self.grad_sync == "sharded")
            self.gate.install_agreed(skip, norm, thr)
            (host, host_vec), event = self.gate.stage(stats, vec)
            self._gate_prev = (host_vec, event)
        else:
            self.gate.install(stats, total, thr)
            (host,), event = self.gate.stage(stats)
            host_vec = None
        lr = self.optimizer.param_groups[0].get("lr", 0.0)
        lr = float(lr) if not torch.is_tensor(lr) or lr.device.type == "cpu" else 0.0
        absent = loss is None

        def build():  # on the sender thread
            if event is not None:
                event.synchronize()  # blocks in C without the GIL
            return self._gated_report(step, host.tolist(), ng, names, lr, step_time, thr, bounds, absent,
                                      None if host_vec is None else host_vec.tolist())

        self._gate_futs.append(self.sender.submit_deferred(step, build, self.generation))
        verdict = Verdict(step, Action.APPLY, clip_threshold=thr, validation_allowed=self._validation_hint,
                          bounds=bounds, decided_locally=True, device_gated=True)
        return self._finish(step, verdict)

    def _gated_report(self, step, vals, ng, names, lr, step_time, thr, bounds, absent, reduced=None):
        loss_v, gnorm = vals[0], vals[1]
        mods = vals[2 + ng:]
        mod_finite = [math.isfinite(x) for x in mods]
        finite, clipped, in_bounds = rules.gated_outcome(loss_v, gnorm, mod_finite, thr, bounds)  # = the device's gate
        locally_finite = finite
        if reduced is not None:  # several ranks: the device acted on what they agreed
            sharded = self.grad_sync == "sharded"
            any_bad, _, spread = dist_agree.reduced_flags(reduced, self.world_size, sharded)
            if sharded and finite:
                gnorm = math.sqrt(reduced[2])  # the global norm, as FSDP's clip_grad_norm_ computes it
            mismatch = spread is not None and spread > dist_agree.NORM_SPREAD_TOLERANCE
            if mismatch:
                with self._lock:
                    self.counters["grad_norm_mismatches"] += 1
                log.warning("trainguard: step %d: the ranks' grad norms differ (relative spread %.3g) although "
                            "DDP gives every rank the same gradients: silent data corruption or a rank out of "
                            "step; the update was skipped on every rank", step, spread)
            finite = finite and not any_bad and not mismatch
            clipped = finite and thr > 0 and gnorm > thr
            in_bounds = rules.within_bounds(bounds, loss_v, gnorm)
        with self._lock:
            if not finite:
                self.counters["skips"] += 1
            elif clipped:
                self.counters["clips"] += 1
            if finite and in_bounds:
                self.counters["local_decisions"] += 1
        if clipped:
            log.info("trainguard: step %d %s", step, rules.clip_reason(
                gnorm, thr, "on the device: the run's clip policy or the spike bound beyond which the sidecar is asked"))
        if locally_finite and not finite:
            log.warning("trainguard: step %d: another rank saw a non-finite value or the norms disagreed: the update "
                        "was skipped on every rank", step)
        elif not finite:
            bad = first_non_finite(names, mod_finite)
            log.warning("trainguard: step %d non-finite (loss=%s, grad norm=%s%s): the update was skipped on the "
                        "device; the sidecar decides what follows", step, loss_v, gnorm,
                        f", first non-finite module call {bad}" if bad else "")
        return step_report(self.run, self.rank, step, loss=loss_v, grad_norm=gnorm, group_norms=vals[2:2 + ng],
                           learning_rate=lr, step_time=step_time, loss_absent=absent, module_names=names,
                           module_values=mods, values_are_max_abs=self._watch_sends_max_abs(),
                           decided_locally=finite and in_bounds)

    # ------------------------------------------------------------------ applying verdicts

    def _finish(self, step, verdict, gnorm=None, error=None):
        if isinstance(verdict, tuple):
            verdict, error = verdict
        if dist_agree.is_initialized() and self.world_size > 1 and not verdict.device_gated:
            need = self.connection.offline or self.bounds is None or not self.bounds.usable(step + 1)
            verdict, error, self._host_next = dist_agree.agree(self, verdict, error, need_host=need)
        self.last_verdict = verdict
        self.last_step = step
        self._pending_update = True
        if error is not None:
            raise error
        apply_.apply_verdict(self, verdict, gnorm)
        return verdict

    def optimizer_step(self):
        """Steps the optimizer (through the GradScaler if any) and the scheduler when the last
        verdict allows it; otherwise only lets the GradScaler close its iteration."""
        return apply_.optimizer_step(self)

    def wrap(self, obj):
        """``opt = guard.wrap(optimizer)``: an Optimizer whose ``step()`` runs only when the verdict
        allows it (for loops, GradScaler, schedulers and frameworks that call ``opt.step()``
        themselves); build the LR scheduler on it. ``guard.wrap(scheduler)``: a scheduler whose
        ``step()`` is skipped with the update. See trainguard/wrap.py."""
        if isinstance(obj, GuardedOptimizer) and obj.guard is self:
            return obj
        if isinstance(obj, torch.optim.Optimizer):
            if obj is not self.optimizer:
                raise ValueError("guard.wrap(optimizer): wrap the optimizer this Guard was built with "
                                 f"({type(self.optimizer).__name__}), not another one")
            if self._wrapped is None:
                self._wrapped = GuardedOptimizer(self, obj)
            return self._wrapped
        if hasattr(obj, "step") and hasattr(obj, "state_dict") and hasattr(obj, "optimizer"):
            if self.scheduler is None:
                self.scheduler = obj  # restored on rollback; stepped by the loop through the wrapper
            return GuardedScheduler(self, obj)
        raise TypeError(f"guard.wrap() takes the Guard's optimizer or an LR scheduler, not {type(obj).__name__}")

    def _verdict_for_update(self, auto=True):
        """The verdict an optimizer update about to run must obey. With ``auto`` and no
        ``step()`` since the last update, the step is measured and judged now (loss absent)."""
        if not self._pending_update and auto:
            self.step(self.last_step + 1 if self.last_step is not None else 0, None)
        self._pending_update = False
        return self.last_verdict

    @contextlib.contextmanager
    def protected_update(self):
        """``with guard.protected_update(): <manual weight update>``: copies the weights (and
        optimizer state) first and checks them after; a non-finite result is undone and raises
        NonFiniteUpdate. Costs one copy of the weights and one device read."""
        v = self._verdict_for_update(auto=False)
        snap = self.protector.snapshot()
        yield
        self.protector.check(snap, v.step if v else -1)

    def pause(self):
        """Detaches the guard until ``resume()``: waits for queued reports, removes the forward hooks
        and the optimizer's device gate, so the optimizer steps as if unguarded. ``step()`` while
        paused returns APPLY without measuring."""
        self.flush()
        self._gate_futs.clear()
        if self.watch:
            self.watch.remove()
            self.watch.reset()
        self.gate.uninstall()
        if not self.connection.offline:
            self.heartbeat(self.last_step or 0, "IDLE")  # a paused trainer is not hung (HangWatch)
        self.connection.pause()

    def resume(self):
        if self.watch:
            self.watch.attach()
        self._step_t0 = time.perf_counter()
        self.connection.resume()
        if not self.connection.offline:
            self.heartbeat(self.last_step or 0, "STEP")

    # ------------------------------------------------------------------ checkpoints and validation

    def save_checkpoint(self, directory, step, data_position=0, extra=None):
        """Saves model (safetensors), optimizer/scheduler/scaler/client state (torch.save) and
        registers the weights with the sidecar. Returns the sidecar's checkpoint dict (or None)."""
        return checkpointing.save(self, directory, step, data_position, extra)

    def checkpoint_saved(self, path_or_dir_or_files, step, data_position=0):
        """Registers a checkpoint that other code wrote (torch.save, Lightning, DCP, Trainer) with the
        sidecar and records it for rollback. Returns the sidecar's checkpoint dict (or None)."""
        try:
            from . import checkpoints as formats
        except ImportError:
            formats = None
        if formats is None or not hasattr(formats, "register_saved"):
            return checkpointing.register_saved(self, path_or_dir_or_files, step, data_position)
        # Every rank records the entry (a ROLLBACK may name it); rank 0 registers; an unreachable
        # sidecar is the failure mode's business, like every other call.
        files = formats._paths(path_or_dir_or_files)  # raises when a path does not exist
        entry = {"dir": files[0], "files": checkpointing.files_of(files[0] if len(files) == 1 else files),
                 "checkpoint_id": "", "data_position": int(data_position)}
        self.checkpoints[int(step)] = entry
        if self.rank != 0 and dist_agree.is_initialized() and self.world_size > 1:
            return None
        try:
            c = formats.register_saved(self, files, step, data_position=data_position)
        except grpc.RpcError as e:
            if checkpointing.grpc_code(e) in checkpointing.UNREACHABLE:
                self.connection.unreachable("RegisterCheckpoint", e)
                return None
            raise
        entry["checkpoint_id"] = c["checkpoint_id"]
        return c

    def load_checkpoint(self, path_or_step):
        """Restores model/optimizer/scheduler/scaler/client state; returns the side file's dict."""
        return checkpointing.load(self, path_or_step)

    def _rollback(self, v):
        rollback_.rollback(self, v)

    def is_bad_batch(self, data_position):
        """Whether the batch at ``data_position`` failed DETERMINISTICALLY on replay: a loop that
        re-reads data after a rollback skips it."""
        return int(data_position) in self.recovery.bad_positions

    def validation(self, model=None, step=None, restore=True):
        """``with guard.validation(model) as v: if v.allowed: ...`` — ``v.allowed`` says whether the
        sidecar allows validation now (a refusal is logged once per reason); afterwards the model is
        audited and, by default, restored. See validation.py."""
        return ValidationContext(self, model or self.model, step, restore)

    # ------------------------------------------------------------------ state and lifecycle

    def state_dict(self):
        with self._lock:
            return {"version": 1, "run": self.run, "counters": dict(self.counters), "generation": self.generation,
                    "bounds": None if self.bounds is None else vars(self.bounds).copy(),
                    "checkpoints": {k: dict(v) for k, v in self.checkpoints.items()},
                    "rewarm": self.recovery.lr.rewarm, "policy": dict(self.policy_overrides),
                    "last_step": self.last_step, "recovery": self.recovery.state_dict()}

    def load_state_dict(self, state):
        if state.get("version") != 1:
            raise ValueError(f"unknown trainguard state version {state.get('version')}")
        with self._lock:
            self.counters.update(state["counters"])
            self.generation = state["generation"]
            self.bounds = LocalBounds(**state["bounds"]) if state.get("bounds") else self.bounds
            self.checkpoints = {int(k): dict(v) for k, v in state["checkpoints"].items()}
            self.last_step = state.get("last_step")
            self.recovery.load_state_dict(state.get("recovery"))
            if state.get("rewarm") and not state.get("recovery"):
                self.recovery.lr.rewarm = tuple(state["rewarm"])

    def heartbeat(self, step, phase="STEP"):
        try:
            return self.transport.call("Heartbeat", pb.HeartbeatRequest(run_id=self.run, rank=self.rank, step=step,
                                                                         phase=pb.Phase.Value("PHASE_" + phase)))
        except grpc.RpcError as e:
            self.connection.unreachable("Heartbeat", e)

    def flush(self, timeout=None):
        """Waits until every queued report has its verdict (or the timeout passes)."""
        return self.sender.flush(self.deadline * 4 if timeout is None else timeout)

    def close(self, reason="training finished"):
        self.flush()
        self.gate.uninstall()
        self.sender.close()
        try:
            self.transport.call("CloseRun", pb.CloseRunRequest(run_id=self.run, rank=self.rank, reason=reason))
        except grpc.RpcError:
            pass
        if self.watch:
            self.watch.remove()
        self.transport.close()
        self.counters["reports_dropped"] = self.sender.dropped
