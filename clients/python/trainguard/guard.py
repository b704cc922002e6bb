"""Guard: one object per rank that reports every step to the sidecar and applies its verdict.

Per step (between ``loss.backward()`` and ``optimizer.step()``)::

    verdict = guard.step(step, loss)   # measures, decides (locally or with the sidecar), applies
    guard.optimizer_step()             # steps optimizer/scaler/scheduler only if the verdict allows

See docs/client.md for the design and its guarantees.
"""
import logging
import collections
import math
import os
import socket
import threading
import time
import uuid
import warnings

import grpc
import torch

from . import distributed as dist_agree
from .errors import RunRefused, SidecarUnavailable, TrainguardError, TrainingHalted
from .safetensors_io import read_safetensors, write_safetensors
from .stats import ModuleWatch, auto_watch, grad_norms
from .transport import ReportSender, Transport
from .validation import ModelSnapshot, ValidationSession, _SkipBody, skip_with_body
from .verdict import Action, LocalBounds, RollbackPlan, Verdict
from ._proto.trainguard.v1 import trainguard_pb2 as pb

log = logging.getLogger("trainguard")

_DTYPE = {torch.float32: pb.D_TYPE_FLOAT32, torch.float16: pb.D_TYPE_FLOAT16, torch.bfloat16: pb.D_TYPE_BFLOAT16,
          torch.float64: pb.D_TYPE_FLOAT64, torch.int64: pb.D_TYPE_INT64, torch.int32: pb.D_TYPE_INT32,
          torch.int16: pb.D_TYPE_INT16, torch.int8: pb.D_TYPE_INT8, torch.uint8: pb.D_TYPE_UINT8,
          torch.bool: pb.D_TYPE_BOOL}
_ENUM_PREFIX = {"clip_mode": "CLIP_MODE_", "spike_action": "ACTION_", "preflight_mode": "AUDIT_MODE_"}
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED)


class NonFiniteUpdate(TrainguardError):
    """optimizer.step() turned finite weights non-finite; the update was undone (protect_update)."""

    def __init__(self, step, module, detail):
        super().__init__(
            f"optimizer.step() at step {step} made the weights of '{module}' non-finite from finite "
            f"gradients; trainguard undid the update and stopped. {detail}")
        self.step, self.module = step, module


def build_policy(overrides):
    p = pb.Policy()
    for key, value in (overrides or {}).items():
        if key in ("hang_min", "hang_max"):
            getattr(p, key).FromNanoseconds(int(float(value) * 1e9))
        elif key in _ENUM_PREFIX and isinstance(value, str):
            setattr(p, key, _enum_number(key, value))
        elif isinstance(value, Action):
            setattr(p, key, int(value))
        else:
            setattr(p, key, value)
    return p


def _enum_number(key, value):
    enum = {"clip_mode": pb.ClipMode, "spike_action": pb.Action, "preflight_mode": pb.AuditMode}[key]
    return enum.Value(_ENUM_PREFIX[key] + value.upper())


def _grpc_code(e):
    return e.code() if isinstance(e, grpc.RpcError) and hasattr(e, "code") else None


class Guard:
    """Guards one rank's training loop. See the module docstring and docs/client.md.

    Args:
      model, optimizer: the training model and its optimizer.
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
      verdict_lag: with the device gate, ``step(k)`` first waits (at most ``deadline``) for the
        sidecar's verdict on step ``k - verdict_lag``, so a ROLLBACK/HALT for step k-1 is applied at
        step k. Normally the verdict is already there. None: never wait (verdicts apply when they
        arrive).
    """

    def __init__(self, model, optimizer, run, *, target=None, scheduler=None, scaler=None,
                 watch="auto", deadline=0.5, failure_mode="open", mode="async", policy=None,
                 rank=None, world_size=None, open_deadline=None, protect_update="auto",
                 master_weights=False, autocast_dtype=None, clipping_configured=False,
                 framework="torch", trainer_instance=None, warn_every=100, device_gate="auto",
                 verdict_lag=1):
        if failure_mode not in ("open", "closed"):
            raise ValueError('failure_mode must be "open" or "closed"')
        if mode not in ("async", "sync"):
            raise ValueError('mode must be "async" or "sync"')
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
        self.warn_every = warn_every

        params = [p for p in model.parameters()]
        self.device = params[0].device if params else torch.device("cpu")
        low = any(p.requires_grad and p.dtype in (torch.float16, torch.bfloat16) for p in params)
        self.protect_update = (low and not master_weights) if protect_update == "auto" else bool(protect_update)
        self._update_buffers = None
        self._no_scale = None
        if device_gate not in ("auto", True, False):
            raise ValueError('device_gate must be "auto", True or False')
        gate_ok = (mode == "async" and bool(getattr(optimizer, "_step_supports_amp_scaling", False))
                   and not self.protect_update and not (scaler is not None and scaler.is_enabled())
                   and self.world_size == 1)
        if device_gate is True and not gate_ok:
            raise ValueError("device_gate=True needs mode='async', an optimizer that honours found_inf/grad_scale "
                             "(fused=True Adam/AdamW/SGD), no GradScaler, no protect_update and one rank")
        self.device_gate = gate_ok and (device_gate is True or (device_gate == "auto" and self.device.type == "cuda"))
        self.verdict_lag = verdict_lag
        names = auto_watch(model) if watch == "auto" else list(watch or [])
        reduce = "sum" if (self.device.type == "cuda" or self.device_gate) else "amax"
        self.watch = ModuleWatch(model, names, reduce=reduce) if names else None

        # Counters and state that round-trip through state_dict().
        self.counters = {"steps": 0, "local_decisions": 0, "sidecar_verdicts": 0, "sidecar_failures": 0,
                         "skips": 0, "clips": 0, "rollbacks": 0, "reports_dropped": 0, "validation_incidents": 0,
                         "device_gated_steps": 0}
        self.bounds = None
        self.generation = 0
        self.checkpoints = {}  # step -> {"dir", "files", "checkpoint_id", "data_position"}
        self.rewarm = None     # (first_step, steps) after a rollback
        self.last_verdict = None
        self.last_step = None
        self.findings = []
        self.resumed = False

        self._lock = threading.Lock()
        self._late = None            # ROLLBACK/HALT verdict that arrived for an async report
        self._async_error = None     # fail-closed: an async report failed
        self._validation_hint = False
        self._offline = False
        self._last_open_try = 0.0
        self._unscaled = False
        self._step_t0 = time.perf_counter()
        self._applied_rollbacks = set()
        self._warned = False
        self._gate_found = None      # device float32 0-d: 1.0 = the optimizer skips (optimizer.found_inf)
        self._gate_scale = None      # device float32 0-d: grads are divided by it (optimizer.grad_scale)
        self._gate_futs = collections.deque()  # device-gated reports not yet answered
        self._gate_warned = False

        # The manifests set TRAINGUARD_TARGET (the pod's socket); an explicit target wins.
        target = target or os.environ.get("TRAINGUARD_TARGET") or "127.0.0.1:7474"
        self.transport = Transport(target, deadline)
        self._open_run(open_deadline if open_deadline is not None else max(10.0, self.deadline))
        self.sender = ReportSender(self.transport, self._on_report_result)

    # ------------------------------------------------------------------ run setup

    def _describe(self):
        groups, total = [], 0
        for i, g in enumerate(self.optimizer.param_groups):
            ps = g["params"]
            n = sum(p.numel() for p in ps)
            total += n
            dtype = ps[0].dtype if ps else torch.float32
            groups.append(pb.ParameterGroup(name=str(g.get("name", f"group{i}")), parameter_count=n,
                                            dtype=_DTYPE.get(dtype, pb.D_TYPE_UNSPECIFIED), trainable=True,
                                            has_master_copy=self.master_weights))
        names = self.watch.names if self.watch else []
        return pb.ModelDescription(parameter_groups=groups, watched_modules=names, parameter_count=total)

    def _precision(self):
        ps = [p for p in self.model.parameters() if p.requires_grad]
        pdtype = ps[0].dtype if ps else torch.float32
        d = self.optimizer.defaults
        eps = d.get("eps", 0.0)
        eps = float(eps[0] if isinstance(eps, (tuple, list)) else eps or 0.0)
        state_dtypes = set()
        for st in list(self.optimizer.state.values())[:4]:
            for v in st.values():
                if torch.is_tensor(v) and v.dim() > 0:
                    state_dtypes.add(_DTYPE.get(v.dtype, pb.D_TYPE_UNSPECIFIED))
        if not state_dtypes and ps:
            state_dtypes.add(_DTYPE.get(pdtype, pb.D_TYPE_UNSPECIFIED))  # torch optimizers keep state in the param dtype
        return pb.PrecisionSetup(
            parameter_dtype=_DTYPE.get(pdtype, pb.D_TYPE_UNSPECIFIED),
            autocast_dtype=_DTYPE.get(self.autocast_dtype, pb.D_TYPE_UNSPECIFIED) if self.autocast_dtype else pb.D_TYPE_UNSPECIFIED,
            optimizer_name=type(self.optimizer).__name__, optimizer_eps=eps,
            loss_scaler=bool(self.scaler is not None and self.scaler.is_enabled()),
            master_weights=self.master_weights, clipping_configured=self.clipping_configured,
            clipping_effective=self.clipping_configured, framework=self.framework,
            optimizer_state_dtypes=sorted(state_dtypes))

    def _open_run(self, deadline):
        self._last_open_try = time.monotonic()
        req = pb.OpenRunRequest(run_id=self.run, rank=self.rank, world_size=self.world_size,
                                policy=build_policy(self.policy_overrides), model=self._describe(),
                                precision=self._precision(), trainer_instance=self.trainer_instance)
        try:
            resp = self.transport.call("OpenRun", req, deadline=deadline)
        except grpc.RpcError as e:
            code = _grpc_code(e)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise RunRefused(f"trainguard refused run '{self.run}': {e.details()}") from None
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS):
                raise TrainguardError(f"OpenRun for run '{self.run}' failed: {code.name}: {e.details()}") from None
            self._unreachable("OpenRun", e)
            self._offline = True
            return
        self._offline = False
        self.findings = [(f.code, pb.Severity.Name(f.severity), f.message) for f in resp.findings]
        for code, sev, msg in self.findings:
            log.warning("trainguard pre-flight %s %s: %s", sev, code, msg)
        self.resumed = resp.resumed
        if resp.HasField("bounds"):
            self.bounds = LocalBounds.from_proto(resp.bounds)

    def _unreachable(self, what, err):
        self.counters["sidecar_failures"] += 1
        msg = f"trainguard sidecar at {self.transport.target} did not answer {what} within {self.deadline}s: {err}"
        if self.failure_mode == "closed":
            raise SidecarUnavailable(msg + " (failure_mode='closed': training stops; start the sidecar or use failure_mode='open')")
        n = self.counters["sidecar_failures"]
        if not self._warned or n % self.warn_every == 0:
            self._warned = True
            warnings.warn(msg + f" (failure_mode='open': training goes on; {n} failures so far)", RuntimeWarning)

    # ------------------------------------------------------------------ per step

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

    def _measure(self, loss):
        """One packed float32 tensor: [loss, grad_norm, loss scale, group norms..., module max |x|...],
        read once. Returns (loss, grad_norm, group_norms, module_names, module_max, loss_scale)."""
        groups = [g["params"] for g in self.optimizer.param_groups]
        total, per_group = grad_norms(groups, self.device)
        if torch.is_tensor(loss):
            lt = loss.detach().float().reshape(()).to(self.device)
        else:
            lt = torch.tensor(float("nan") if loss is None else float(loss), device=self.device)
        if self.scaler is not None and self.scaler.is_enabled():
            # the scale tensor itself: get_scale() would be a second device read per step
            scale = self.scaler._get_scale_async().detach().float().reshape(1).to(self.device)
        else:
            if self._no_scale is None:  # made once: a fresh zeros() would be a kernel every step
                self._no_scale = torch.zeros(1, device=self.device)
            scale = self._no_scale
        parts = [lt.reshape(1), total.reshape(1), scale] + [g.reshape(1) for g in per_group]
        names, mods = self.watch.take_list(self.device) if self.watch else ([], [])
        parts += [m.reshape(1) for m in mods]
        vals = torch.cat(parts).tolist()  # the step's only device->host transfer
        ng = len(per_group)
        return vals[0], vals[1], vals[3:3 + ng], names, vals[3 + ng:], vals[2]

    def step(self, step, loss):
        """Measures this step, gets its verdict (locally or from the sidecar), applies it, returns it."""
        now = time.perf_counter()
        step_time, self._step_t0 = now - self._step_t0, now
        self.counters["steps"] += 1
        if self._offline and time.monotonic() - self._last_open_try > 5.0:
            try:
                self._open_run(self.deadline)
            except SidecarUnavailable:
                raise
        if self.device_gate:
            self._await_verdicts(step)
        with self._lock:
            late, self._late = self._late, None
            async_err, self._async_error = self._async_error, None
        if (self.device_gate and late is None and async_err is None and not self._offline
                and self.bounds is not None and self.bounds.usable(step)):
            return self._step_gated(step, loss, step_time)
        if self.device_gate:
            self._gate_uninstall()  # this step is decided on the host: no stale device flag may gate it
        if async_err is not None:
            err = None
            try:
                self._unreachable("ReportStep", async_err)
            except SidecarUnavailable as e:
                err = e
            local = Verdict(step, Action.HALT, reasons=[str(err)])
            self._finish(step, local, error=err)
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
            self._unscaled = True
        loss_v, gnorm, group_norms, mod_names, mod_max, loss_scale = self._measure(loss)
        finite = math.isfinite(loss_v) and math.isfinite(gnorm)
        mods_finite = all(math.isfinite(x) for x in mod_max)
        bounds = self.bounds
        lr = float(self.optimizer.param_groups[0].get("lr", 0.0))
        report = pb.StepReport(run_id=self.run, rank=self.rank, step=step, loss=loss_v, grad_norm=gnorm,
                               group_grad_norms=group_norms, learning_rate=lr,
                               loss_scale=loss_scale,
                               module_stats=pb.ModuleStats(names=mod_names, finite=[math.isfinite(x) for x in mod_max],
                                                           max_abs=mod_max if self.watch is None or self.watch.reduce == "amax" else []),
                               loss_absent=loss is None)
        report.step_time.FromNanoseconds(int(step_time * 1e9))
        scaler_overflow = (self.scaler is not None and self.scaler.is_enabled() and math.isfinite(loss_v)
                           and not math.isfinite(gnorm))
        verdict = None
        if late is not None:
            verdict = late  # a ROLLBACK/HALT for an earlier step: this step's update is dropped too
        elif scaler_overflow or (self.mode == "async" and not self._offline and finite and mods_finite
                                 and bounds is not None and bounds.usable(step)
                                 and (bounds.max_grad_norm <= 0 or gnorm <= bounds.max_grad_norm)
                                 and (bounds.max_loss <= 0 or loss_v <= bounds.max_loss)):
            verdict = self._decide_locally(step, gnorm, bounds, scaler_overflow)
            report.decided_locally = True
            self.sender.submit(report, self.generation, blocking=False)
        elif self._offline:
            verdict = self._decide_offline(step, loss_v, gnorm, finite and mods_finite)
        else:
            verdict = self._ask_sidecar(report, step, loss_v, gnorm, finite and mods_finite)
        return self._finish(step, verdict, gnorm=gnorm)

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
                self._offline = True  # stop paying the deadline every step; OpenRun is retried every 5 s
                self._last_open_try = time.monotonic()
                self._unreachable("ReportStep", TimeoutError(f"no verdict for step {fut.step} within {self.deadline}s"))
                return
            futs.popleft()

    def _gate_buffers(self):
        if self._gate_found is None or self._gate_found.device != self.device:
            self._gate_found = torch.zeros((), dtype=torch.float32, device=self.device)
            self._gate_scale = torch.ones((), dtype=torch.float32, device=self.device)
        return self._gate_found, self._gate_scale

    def _gate_uninstall(self):
        self.optimizer.__dict__.pop("found_inf", None)
        self.optimizer.__dict__.pop("grad_scale", None)

    @staticmethod
    def _gate_threshold(bounds):
        """The clip applied on the device: the sidecar's clip threshold, and never above the bound
        beyond which the sidecar must be asked (a finite spike is clipped to it meanwhile)."""
        thr = bounds.clip_threshold if bounds.clip_threshold > 0 and math.isfinite(bounds.clip_threshold) else 0.0
        m = bounds.max_grad_norm
        if m > 0 and math.isfinite(m):
            thr = min(thr, m) if thr > 0 else m
        return thr

    def _step_gated(self, step, loss, step_time):
        """A step with no host sync: measure on the device, gate the optimizer on the device, hand
        the stats to the sender thread through pinned memory and a CUDA event."""
        bounds = self.bounds
        self.counters["device_gated_steps"] += 1
        groups = [g["params"] for g in self.optimizer.param_groups]
        total, per_group = grad_norms(groups, self.device)
        if torch.is_tensor(loss):
            lt = loss.detach().reshape(1)
            if lt.device != self.device:
                lt = lt.to(self.device)
        else:
            lt = torch.full((1,), float("nan") if loss is None else float(loss), device=self.device)
        names, mods = self.watch.take_list(self.device) if self.watch else ([], [])
        parts = [lt, total.reshape(1)] + [g.reshape(1) for g in per_group] + [m.reshape(1) for m in mods]
        if any(t.dtype != torch.float32 for t in parts):
            parts = [t.float() for t in parts]
        stats = torch.cat(parts)
        found, scale = self._gate_buffers()
        # 1.0 when anything is NaN/Inf: the fused optimizer then leaves weights, moments and its
        # step counter untouched (as under GradScaler).
        torch.logical_not(torch.isfinite(stats).all(), out=found)
        thr = self._gate_threshold(bounds)
        opt = self.optimizer
        opt.found_inf = found
        if thr > 0:
            # clip_grad_norm_'s coefficient min(1, thr/norm) as a divisor the fused kernel applies.
            torch.clamp(total.detach().float(), min=thr, out=scale)
            scale.div_(thr)
            opt.grad_scale = scale
        else:
            opt.__dict__.pop("grad_scale", None)
        if self.device.type == "cuda":
            host = torch.empty(stats.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(stats, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = stats, None
        lr = self.optimizer.param_groups[0].get("lr", 0.0)
        lr = float(lr) if not torch.is_tensor(lr) or lr.device.type == "cpu" else 0.0
        ng, absent = len(per_group), loss is None

        def build():  # on the sender thread
            if event is not None:
                event.synchronize()  # blocks in C without the GIL
            return self._gated_report(step, host.tolist(), ng, names, lr, step_time, thr, bounds, absent)

        self._gate_futs.append(self.sender.submit_deferred(step, build, self.generation))
        verdict = Verdict(step, Action.APPLY, clip_threshold=thr, validation_allowed=self._validation_hint,
                          bounds=bounds, decided_locally=True, device_gated=True)
        return self._finish(step, verdict)

    def _gated_report(self, step, vals, ng, names, lr, step_time, thr, bounds, absent):
        loss_v, gnorm = vals[0], vals[1]
        mods = vals[2 + ng:]
        mod_finite = [math.isfinite(x) for x in mods]
        finite = math.isfinite(loss_v) and math.isfinite(gnorm) and all(mod_finite)  # = the device's gate
        in_bounds = ((bounds.max_grad_norm <= 0 or gnorm <= bounds.max_grad_norm)
                     and (bounds.max_loss <= 0 or loss_v <= bounds.max_loss))
        with self._lock:
            if not finite:
                self.counters["skips"] += 1
            elif thr > 0 and gnorm > thr:
                self.counters["clips"] += 1
            if finite and in_bounds:
                self.counters["local_decisions"] += 1
        if not finite:
            bad = next((n for n, f in zip(names, mod_finite) if not f), "")
            log.warning("trainguard: step %d non-finite (loss=%s, grad norm=%s%s): the update was skipped on the "
                        "device; the sidecar decides what follows", step, loss_v, gnorm,
                        f", first non-finite module '{bad}'" if bad else "")
        amax = self.watch is not None and self.watch.reduce == "amax"
        report = pb.StepReport(run_id=self.run, rank=self.rank, step=step, loss=loss_v, grad_norm=gnorm,
                               group_grad_norms=vals[2:2 + ng], learning_rate=lr,
                               module_stats=pb.ModuleStats(names=names, finite=mod_finite, max_abs=mods if amax else []),
                               loss_absent=absent, decided_locally=finite and in_bounds)
        report.step_time.FromNanoseconds(int(step_time * 1e9))
        return report

    def pause(self):
        """Detaches the guard until ``resume()``: waits for queued reports, removes the forward hooks
        and the optimizer's device gate, so the optimizer steps as if unguarded."""
        self.flush()
        self._gate_futs.clear()
        if self.watch:
            self.watch.remove()
            self.watch.reset()
        self._gate_uninstall()
        self.heartbeat(self.last_step or 0, "IDLE")  # a paused trainer is not hung (HangWatch)

    def resume(self):
        if self.watch:
            self.watch.attach()
        self._step_t0 = time.perf_counter()
        self.heartbeat(self.last_step or 0, "STEP")

    def _decide_locally(self, step, gnorm, bounds, scaler_overflow):
        self.counters["local_decisions"] += 1
        if scaler_overflow:  # GradScaler's own business: it skips this step and lowers the scale
            return Verdict(step, Action.SKIP, reasons=["GradScaler overflow: loss scale lowered"], decided_locally=True)
        thr = bounds.clip_threshold if bounds else 0.0
        action = Action.CLIP if thr > 0 and gnorm > thr else Action.APPLY
        return Verdict(step, action, clip_threshold=thr, validation_allowed=self._validation_hint,
                       bounds=bounds, decided_locally=True)

    def _decide_offline(self, step, loss_v, gnorm, finite):
        """Fail-open decision without the sidecar: never apply a non-finite update."""
        if self.failure_mode == "closed":
            raise SidecarUnavailable(f"trainguard sidecar at {self.transport.target} is unreachable "
                                     f"(failure_mode='closed')")
        if not finite:
            return Verdict(step, Action.SKIP, reasons=["non-finite loss or gradients (sidecar unreachable)"],
                           degraded=True, decided_locally=True)
        thr = (self.bounds.clip_threshold if self.bounds else 0.0) or float(self.policy_overrides.get("clip_threshold", 0.0))
        action = Action.CLIP if thr > 0 and gnorm > thr else Action.APPLY
        return Verdict(step, action, clip_threshold=thr, degraded=True, decided_locally=True)

    def _ask_sidecar(self, report, step, loss_v, gnorm, finite):
        fut = self.sender.submit(report, self.generation, blocking=True)
        # Earlier async reports are ahead of it in the queue; the deadline covers the whole wait.
        if fut.wait(self.deadline + 0.05) and fut.error is None:
            self.counters["sidecar_verdicts"] += 1
            return Verdict.from_proto(fut.response.verdict)
        err = fut.error or TimeoutError(f"no verdict within {self.deadline}s")
        self._offline = True  # stop paying the deadline every step; OpenRun is retried every 5 s
        self._last_open_try = time.monotonic()
        try:
            self._unreachable("ReportStep", err)
        except SidecarUnavailable as e:
            return Verdict(step, Action.HALT, reasons=[str(e)], degraded=True), e
        v = self._decide_offline(step, loss_v, gnorm, finite)
        return v

    def _finish(self, step, verdict, gnorm=None, error=None):
        if isinstance(verdict, tuple):
            verdict, error = verdict
        if dist_agree.is_initialized() and self.world_size > 1:
            verdict, error = dist_agree.agree(self, verdict, error)
        self.last_verdict = verdict
        self.last_step = step
        if error is not None:
            raise error
        self._apply(verdict, gnorm)
        return verdict

    # ------------------------------------------------------------------ applying verdicts

    def _grads(self):
        return [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

    def _apply(self, v, gnorm):
        a = v.action
        if a == Action.APPLY:
            return
        if a == Action.CLIP:
            thr = v.clip_threshold
            if thr > 0 and gnorm is not None and math.isfinite(gnorm) and gnorm > thr:
                coef = thr / (gnorm + 1e-6)
                grads = self._grads()
                if hasattr(torch, "_foreach_mul_"):
                    torch._foreach_mul_(grads, coef)
                else:
                    for g in grads:
                        g.mul_(coef)
                self.counters["clips"] += 1
            return
        if a == Action.SKIP:
            self.optimizer.zero_grad(set_to_none=True)
            self.counters["skips"] += 1
            return
        if a == Action.ROLLBACK:
            self.optimizer.zero_grad(set_to_none=True)
            self._rollback(v)
            return
        if a == Action.HALT:
            self.optimizer.zero_grad(set_to_none=True)
            raise TrainingHalted(v)
        # UNSPECIFIED (an old or confused sidecar): the safe reading is SKIP.
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self):
        """Steps the optimizer (through the GradScaler if any) and the scheduler when the last
        verdict allows it; otherwise only lets the GradScaler close its iteration."""
        v = self.last_verdict
        scaler_on = self.scaler is not None and self.scaler.is_enabled()
        if v is not None and not v.should_step:
            if scaler_on and self._unscaled:
                self.scaler.update()
            self._unscaled = False
            return False
        saved_lr = self._rewarm_lr(v.step if v else None)
        snap = self._snapshot_update() if self.protect_update else None
        if scaler_on:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._unscaled = False
        if saved_lr is not None:
            for g, lr in zip(self.optimizer.param_groups, saved_lr):
                g["lr"] = lr
        if snap is not None:
            self._check_update(snap, v.step if v else -1)
        if self.scheduler is not None:
            self.scheduler.step()
        return True

    def _rewarm_lr(self, step):
        if self.rewarm is None or step is None:
            return None
        first, n = self.rewarm
        k = step - first
        if k < 0 or k >= n:
            if k >= n:
                self.rewarm = None
            return None
        saved = [g["lr"] for g in self.optimizer.param_groups]
        for g in self.optimizer.param_groups:
            g["lr"] = g["lr"] * (k + 1) / n
        return saved

    def _snapshot_update(self):
        """Copies parameters and optimizer state before optimizer.step() into buffers kept across
        steps (allocated once, refreshed by one foreach copy): a per-step clone and deepcopy would
        allocate ~3x the model every step."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        state = self.optimizer.state
        slots = [(p, k) for p in params for k, t in state.get(p, {}).items() if torch.is_tensor(t)]
        src = [p.detach() for p in params] + [state[p][k] for p, k in slots]
        buf = self._update_buffers
        if (buf is None or len(buf) != len(src)
                or any(b.shape != s.shape or b.dtype != s.dtype or b.device != s.device for b, s in zip(buf, src))):
            buf = self._update_buffers = [torch.empty_like(s) for s in src]
        with torch.no_grad():
            if hasattr(torch, "_foreach_copy_"):
                torch._foreach_copy_(buf, src)
            else:
                for b, s in zip(buf, src):
                    b.copy_(s)
        others = {p: {k: v for k, v in state[p].items() if not torch.is_tensor(v)} for p in params if p in state}
        return params, slots, buf, others

    def _undo_update(self, snap):
        """Puts parameters (same objects, so the optimizer's references hold) and optimizer state
        back as they were before the step; state the step created is dropped."""
        params, slots, buf, others = snap
        state = self.optimizer.state
        with torch.no_grad():
            for p, b in zip(params, buf):
                p.copy_(b)
        for p in params:
            if p not in others:
                state.pop(p, None)
        for p, kv in others.items():
            state[p] = dict(kv)
        for (p, k), b in zip(slots, buf[len(params):]):
            state[p][k] = b.clone()

    def _check_update(self, snap, step):
        params = snap[0]
        norms = [n.float() for n in (torch._foreach_norm([p.detach() for p in params])
                                     if hasattr(torch, "_foreach_norm") else [p.detach().norm() for p in params])]
        ok = torch.isfinite(torch.stack(norms)).tolist()  # one device read
        if all(ok):
            return
        owner = {id(p): n for n, p in self.model.named_parameters()}
        bad_params = [p for p, good in zip(params, ok) if not good]
        bad = [owner.get(id(p), "?") for p in bad_params]
        first_bad = (bad[0], bad_params[0])
        order = self.watch.forward_order() if self.watch else []
        module = next((m for m in order if any(b == m or b.startswith(m + ".") for b in bad)), bad[0].rsplit(".", 1)[0])
        self._undo_update(snap)
        self._report_bad_update(step, first_bad)
        d = self.optimizer.defaults
        detail = (f"Non-finite parameters: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. "
                  f"Parameters are {params[0].dtype} without fp32 master weights and {type(self.optimizer).__name__} "
                  f"eps={d.get('eps')}: in {params[0].dtype} an eps below the smallest normal rounds to 0 and the "
                  f"first update divides by ~0. Keep fp32 master weights (AMP autocast + GradScaler, or "
                  f"DeepSpeed) or raise eps.")
        raise NonFiniteUpdate(step, module, detail)

    def _report_bad_update(self, step, first_bad):
        name, p = first_bad
        t = p.detach().float().cpu().contiguous()
        raw = pb.RawTensor(name=f"{name} (after optimizer.step, undone)", dtype=pb.D_TYPE_FLOAT32,
                           shape=list(t.shape), data=t.reshape(-1).numpy().tobytes() if t.numel() else b"")
        try:
            self.transport.call("InspectTensors", pb.InspectTensorsRequest(run_id=self.run, rank=self.rank, step=step,
                                                                          tensors=[raw]))
        except grpc.RpcError as e:
            log.warning("trainguard: could not ship the bad update to the sidecar: %s",
                        e.details() if hasattr(e, "details") else e)

    # ------------------------------------------------------------------ checkpoints and rollback

    def save_checkpoint(self, directory, step, data_position=0, extra=None):
        """Saves model (safetensors), optimizer/scheduler/scaler/client state (torch.save) and
        registers the weights with the sidecar. Returns the sidecar's checkpoint dict (or None)."""
        path = os.path.abspath(os.path.join(directory, f"step-{int(step):08d}"))
        weights = os.path.join(path, "model.safetensors")
        writer = self.rank == 0 or not (dist_agree.is_initialized() and self.world_size > 1)
        sha, size = "", 0
        if writer:
            os.makedirs(path, exist_ok=True)
            sha, size = write_safetensors(self.model.state_dict(), weights,
                                          metadata={"step": str(step), "run": self.run})
            side = {"optimizer": self.optimizer.state_dict(), "step": int(step), "data_position": int(data_position),
                    "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "guard": self.state_dict(), "extra": extra}
            torch.save(side, os.path.join(path, "trainer.pt.tmp"))
            os.replace(os.path.join(path, "trainer.pt.tmp"), os.path.join(path, "trainer.pt"))
        if dist_agree.is_initialized() and self.world_size > 1:
            dist_agree.barrier()
        entry = {"dir": path, "files": [weights], "checkpoint_id": "", "data_position": int(data_position)}
        self.checkpoints[int(step)] = entry
        if not writer:
            return None
        req = pb.RegisterCheckpointRequest(run_id=self.run, rank=self.rank, step=int(step),
                                           format=pb.CHECKPOINT_FORMAT_SAFETENSORS,
                                           files=[pb.CheckpointFile(path=weights, sha256=sha, size_bytes=size)],
                                           data_position=int(data_position))
        try:
            resp = self.transport.call("RegisterCheckpoint", req, deadline=max(self.deadline, 2.0))
        except grpc.RpcError as e:
            if _grpc_code(e) in _UNREACHABLE:
                self._unreachable("RegisterCheckpoint", e)
                return None
            if _grpc_code(e) == grpc.StatusCode.UNIMPLEMENTED:
                # An older sidecar: the files are saved and restorable locally, just not tracked.
                warnings.warn(f"trainguard sidecar does not track checkpoints yet ({e.details()}); "
                              f"step {step} saved locally only", RuntimeWarning)
                return None
            raise TrainguardError(f"RegisterCheckpoint step {step}: {_grpc_code(e).name}: {e.details()}") from None
        c = resp.checkpoint
        entry["checkpoint_id"] = c.checkpoint_id
        return {"checkpoint_id": c.checkpoint_id, "state": pb.CheckpointState.Name(c.state),
                "state_reason": c.state_reason, "step": c.step}

    def load_checkpoint(self, path_or_step):
        """Restores model/optimizer/scheduler/scaler/client state; returns the side file's dict."""
        d = self.checkpoints[path_or_step]["dir"] if isinstance(path_or_step, int) else path_or_step
        if d.endswith(".safetensors"):
            d = os.path.dirname(d)
        weights = read_safetensors(os.path.join(d, "model.safetensors"))
        self.model.load_state_dict({k: v.to(self.device) for k, v in weights.items()})
        side = torch.load(os.path.join(d, "trainer.pt"), map_location=self.device)
        self.optimizer.load_state_dict(side["optimizer"])
        if self.scheduler is not None and side.get("scheduler") is not None:
            self.scheduler.load_state_dict(side["scheduler"])
        if self.scaler is not None and side.get("scaler") is not None:
            self.scaler.load_state_dict(side["scaler"])
        return side

    def _rollback(self, v):
        plan = v.rollback or RollbackPlan()
        key = (plan.checkpoint_id, plan.checkpoint_step, plan.attempt, v.step)
        target = plan.files[0] if plan.files else self.checkpoints.get(plan.checkpoint_step, {}).get("dir")
        if target is None:
            raise TrainingHalted(Verdict(v.step, Action.HALT, reasons=v.reasons + [
                f"ROLLBACK to step {plan.checkpoint_step} ordered but its files are unknown to this rank"]))
        self.load_checkpoint(target)
        factor = plan.lr_factor if plan.lr_factor > 0 else 1.0
        for g in self.optimizer.param_groups:
            g["lr"] = g["lr"] * factor
            if "initial_lr" in g:
                g["initial_lr"] = g["initial_lr"] * factor
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        if plan.rewarm_steps > 0:
            self.rewarm = (plan.checkpoint_step + 1, int(plan.rewarm_steps))
        with self._lock:
            self.generation += 1  # verdicts still in flight for pre-rollback steps are void
            self._late = None
        if self.watch:
            self.watch.reset()
        self._applied_rollbacks.add(key)
        self.counters["rollbacks"] += 1
        v.resume_step = plan.checkpoint_step + 1
        log.warning("trainguard: rolled back to step %d (%s), data position %d, lr x%.3g",
                    plan.checkpoint_step, target, plan.resume_position, factor)

    # ------------------------------------------------------------------ validation

    def validation(self, model=None, step=None, restore=True):
        """``with guard.validation(model) as v:`` — the body runs only when the sidecar allows it;
        afterwards the model is audited and, by default, restored. ``v.allowed`` says which."""
        return _ValidationContext(self, model or self.model, step, restore)

    # ------------------------------------------------------------------ state

    def state_dict(self):
        with self._lock:
            return {"version": 1, "run": self.run, "counters": dict(self.counters), "generation": self.generation,
                    "bounds": None if self.bounds is None else vars(self.bounds).copy(),
                    "checkpoints": {k: dict(v) for k, v in self.checkpoints.items()},
                    "rewarm": self.rewarm, "policy": dict(self.policy_overrides),
                    "last_step": self.last_step}

    def load_state_dict(self, state):
        if state.get("version") != 1:
            raise ValueError(f"unknown trainguard state version {state.get('version')}")
        with self._lock:
            self.counters.update(state["counters"])
            self.generation = state["generation"]
            self.bounds = LocalBounds(**state["bounds"]) if state.get("bounds") else self.bounds
            self.checkpoints = {int(k): dict(v) for k, v in state["checkpoints"].items()}
            self.rewarm = tuple(state["rewarm"]) if state.get("rewarm") else None
            self.last_step = state.get("last_step")

    def heartbeat(self, step, phase="STEP"):
        try:
            return self.transport.call("Heartbeat", pb.HeartbeatRequest(run_id=self.run, rank=self.rank, step=step,
                                                                         phase=pb.Phase.Value("PHASE_" + phase)))
        except grpc.RpcError as e:
            self._unreachable("Heartbeat", e)

    def flush(self, timeout=None):
        """Waits until every queued report has its verdict (or the timeout passes)."""
        return self.sender.flush(self.deadline * 4 if timeout is None else timeout)

    def close(self, reason="training finished"):
        self.flush()
        self._gate_uninstall()
        self.sender.close()
        try:
            self.transport.call("CloseRun", pb.CloseRunRequest(run_id=self.run, rank=self.rank, reason=reason))
        except grpc.RpcError:
            pass
        if self.watch:
            self.watch.remove()
        self.transport.close()
        self.counters["reports_dropped"] = self.sender.dropped


class _ValidationContext:
    def __init__(self, guard, model, step, restore):
        self.g, self.model, self.step, self.restore = guard, model, step, restore

    def __enter__(self):
        import sys
        g = self.g
        self.step = self.step if self.step is not None else (g.last_verdict.step if g.last_verdict else 0)
        g.flush(g.deadline)  # the sidecar judges validation on up-to-date state
        allowed, reason = True, ""
        try:
            r = g.transport.call("BeginValidation", pb.BeginValidationRequest(run_id=g.run, rank=g.rank, step=self.step))
            allowed, reason = r.allowed, r.reason
        except grpc.RpcError as e:
            g._unreachable("BeginValidation", e)  # raises when closed; open: validate, audit still runs
            reason = "sidecar unreachable; validating with the audit on"
        if dist_agree.is_initialized() and g.world_size > 1:
            allowed = dist_agree.all_true(allowed)
        self.session = ValidationSession(allowed, reason)
        self._old_trace = None
        if not allowed:
            self._skipping = True
            self._old_trace = skip_with_body(sys._getframe(1))
            return self.session
        self._skipping = False
        if g.watch:
            g.watch.enabled = False
        ours = set()
        if g.watch:
            for h in g.watch._handles:
                ours.add(h.id)
        self.snap = ModelSnapshot(self.model, keep_values=self.restore, ignore_hooks=ours)
        return self.session

    def __exit__(self, exc_type, exc, tb):
        import sys
        g = self.g
        if self._skipping:
            sys.settrace(self._old_trace)
            return exc_type is _SkipBody
        if g.watch:
            g.watch.enabled = True
        p, d, w, r, details = self.snap.diff()
        changed = p or d or w or r
        if changed and self.restore:
            self.snap.restore()
            self.session.restored = True
        self.session.audit = {"parameters_changed": p, "dtype_device_mode_changed": d, "wiring_changed": w,
                              "rng_changed": r, "details": details, "restored": self.session.restored}
        audit = pb.ValidationAudit(parameters_changed=p, dtype_device_mode_changed=d, wiring_changed=w,
                                   rng_changed=r, details=details[:64], restored=self.session.restored)
        try:
            resp = g.transport.call("EndValidation", pb.EndValidationRequest(
                run_id=g.run, rank=g.rank, step=self.step, validation_loss=float(self.session.loss or 0.0), audit=audit))
            self.session.incident_ids = list(resp.incident_ids)
        except grpc.RpcError as e:
            if exc_type is None:
                g._unreachable("EndValidation", e)
        if changed:
            g.counters["validation_incidents"] += 1
            log.warning("trainguard: validation changed the model (%s)%s", "; ".join(details[:8]),
                        ", undone" if self.session.restored else "")
        return False
