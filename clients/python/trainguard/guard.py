"""Guard: one object per rank that reports every step to the sidecar and applies its verdict.

Per step (between ``loss.backward()`` and ``optimizer.step()``)::

    verdict = guard.step(step, loss)   # measures, decides (locally or with the sidecar), applies
    guard.optimizer_step()             # steps optimizer/scaler/scheduler only if the verdict allows

``Guard`` is a façade: it holds the parts, picks the path of each step by the client state
(``connection.ClientState``: ONLINE / GATED / OFFLINE / PAUSED) and applies the verdict (parts: the
module map in ``trainguard/__init__.py``, and docs/client.md)."""
import contextlib
import logging
import os
import socket
import threading
import time
import uuid

import torch

from . import answers, checkpointing, client_state, host_path, lifecycle, step_args
from . import apply as apply_
from . import distributed as dist_agree
from .connection import ClientState, Connection
from .errors import NonFiniteUpdate, SidecarUnavailable  # noqa: F401  (NonFiniteUpdate: public here)
from .backward_gate import BackwardGate
from .gated import GatedPath, gate_wanted
from .loop_updates import LoopUpdates, StepChecks
from .measure import DeviceGate, StepMeter, momentum_unborn
from .protect import UpdateProtector, ship_bad_tensor
from .recovery import Recovery
from .report_process import for_transport
from .run_setup import build_policy, check_choices, check_optimizer  # noqa: F401  (build_policy: public here)
from .numbering import LoopNumbering
from .running_stats import RunningStats
from .scaler_share import share_unscale
from .stats import ModuleWatch
from .watch_names import auto_watch
from .transport import ReportSender, Transport
from .validation import ValidationContext, ValidationSession
from .verdict import Action, Verdict
from .wrap import wrap as wrap_

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
      step_buffers: buffers the forward writes that are not found by themselves (forward_writes.py: written
        after the first 4 steps, or inside a compiled module): put back, like those, on a skipped step.
      protect_update: check the weights after optimizer.step() and undo a non-finite update.
        "auto" turns it on for low-precision parameters without fp32 master weights.
      device_gate: "auto" (default): on CUDA with a fused Adam/AdamW/SGD, mode="async" and no
        protect_update, healthy steps run with no host sync (the skip flag and clip factor computed on
        the device, docs/client.md "GPU"). False: never. True: wherever the optimizer allows it.
      grad_sync: several ranks on the device gate: "replicated" (DDP: every rank holds the same
        gradients; the ranks' norms must agree, else the step is skipped as corrupted), "sharded"
        (FSDP: the global norm is the square root of the sum of the ranks' squared norms) or
        "auto" (replicated for a DistributedDataParallel model, also torch.compile'd, else sharded).
      verdict_lag: with the device gate, ``step(k)`` first waits (at most ``deadline``) for the
        sidecar's verdict on step ``k - verdict_lag``, so a ROLLBACK/HALT for step k-1 is applied at
        step k. Normally the verdict is already there. None: never wait (verdicts apply when they
        arrive).
      clipping_configured: the loop clips the gradients itself between ``step()`` and the optimizer
        step (the integrations set it from ``gradient_clip_val`` / ``max_grad_norm``): the guard's clip
        is then applied at ``step()``, before the loop's, so the smaller threshold wins.
      snapshots: in-memory known-good snapshots (trainguard.snapshot.SnapshotPolicy, a dict of its
        fields, True = defaults, False = off). Default: every 25 healthy steps, 2 slots, states up
        to 8 GiB per slot.
      replay: fault replay (trainguard.replay.ReplayPolicy, a dict, True = defaults: non-finite
        steps, at most 4 per 1000 steps; False = off). Needs ``step(..., replay=fn)``.
      lr_restore: after a rollback's LR cut (trainguard.lrcut.LrPolicy or a dict): lift the cut after
        ``restore_after`` healthy steps over ``restore_steps`` steps. Default: keep the cut.
      report_process: "auto" (default): on the device gate on CUDA the ReportStep call is made by a
        child process (report_process.py), off this process's GIL. True / False: always / never (POSIX).
    """

    def __init__(self, model, optimizer, run, *, target=None, scheduler=None, scaler=None,
                 watch="auto", deadline=0.5, failure_mode="open", mode="async", policy=None,
                 rank=None, world_size=None, open_deadline=None, protect_update="auto",
                 master_weights=False, autocast_dtype=None, clipping_configured=False,
                 framework="torch", trainer_instance=None, warn_every=100, device_gate="auto",
                 verdict_lag=1, grad_sync="auto", snapshots=True, replay=True, lr_restore=None,
                 report_process="auto", step_buffers=()):
        check_choices(failure_mode=failure_mode, mode=mode, device_gate=device_gate, grad_sync=grad_sync,
                      report_process=report_process)
        optimizer = check_optimizer(optimizer, model)  # an earlier Guard's wrapper's inner one; None: manual updates
        self.model, self.optimizer, self.run = model, optimizer, run
        self.scheduler, self.scaler = scheduler, scaler
        self.steps_scheduler = scheduler is not None  # optimizer_step() steps the one handed here, not one found
        self.failure_mode, self.mode = failure_mode, mode
        self.deadline = float(deadline)
        self.policy_overrides = dict(policy or {})
        self.rank, self.world_size = dist_agree.rank_and_world(rank, world_size)
        self.every_rank = dist_agree.EveryRank(run, self.world_size, self.rank)  # checked before the 1st collective
        self.trainer_instance = trainer_instance or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.master_weights, self.autocast_dtype = master_weights, autocast_dtype
        self.clipping_configured, self.framework = clipping_configured, framework

        params = list(model.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        low = any(p.requires_grad and p.dtype in (torch.float16, torch.bfloat16) for p in params)
        self.protect_update = (low and not master_weights) if protect_update == "auto" else bool(protect_update)
        self.step_checks = StepChecks(params)
        self.device_gate = gate_wanted(self, device_gate)
        self.verdict_lag = verdict_lag
        if grad_sync == "auto":
            ddp = isinstance(getattr(model, "_orig_mod", model), torch.nn.parallel.DistributedDataParallel)  # compiled too
            grad_sync = "replicated" if ddp else "sharded"
        self.grad_sync = grad_sync
        self.gated = GatedPath(self, self.device_gate and self.world_size > 1, grad_sync == "sharded")
        names = auto_watch(model) if watch == "auto" else list(watch or [])
        sharded_ranks = self.world_size > 1 and grad_sync == "sharded"  # the engine may reset .grad itself
        self.watch = ModuleWatch(model, names, forget_discarded=not sharded_ranks) if names else None

        # Counters and state that round-trip through state_dict().
        self.counters = {"steps": 0, "local_decisions": 0, "sidecar_verdicts": 0, "sidecar_failures": 0,
                         "skips": 0, "clips": 0, "rollbacks": 0, "reports_dropped": 0, "validation_incidents": 0,
                         "device_gated_steps": 0, "grad_norm_mismatches": 0}
        self.bounds, self.generation = None, 0
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
        self._wrapped = None         # the GuardedOptimizer handed out by wrap(), if any
        #: callable(path, RollbackPlan) that restores a checkpoint written by a framework (set by the
        #: Lightning / HF integrations); None: load_checkpoint(), the Guard's own format.
        self.restore_hook = None
        self._pending_update = False  # a step() verdict no optimizer update has consumed yet
        self.numbering = LoopNumbering()  # a loop that did not jump back after a rollback (numbering.py)
        self._closed = self._closed_warned = False
        self.meter = StepMeter(optimizer, self.device, scaler, self.watch, sharded=self.gated.sharded and self.world_size > 1)
        share_unscale(self)  # the loop's own scaler.unscale_ and the guard's are one (scaler_share.py)
        self.running_stats = RunningStats(model, step_buffers)  # what a skipped step's forward wrote (running_stats.py)
        self.gate = DeviceGate(optimizer, self.device)
        self.gate.clip_in_place = bool(clipping_configured)  # the loop's own clip must see the guard's
        self.protector = UpdateProtector(model, optimizer, self.watch, lambda *a: ship_bad_tensor(self, *a))
        self.recovery = Recovery(self, snapshots, replay, lr_restore)
        self.backward_gate = BackwardGate(self)
        self.loop_updates = LoopUpdates(self)  # an update the loop makes itself gets the same work around it
        # The manifests set TRAINGUARD_TARGET (the pod's socket); an explicit target wins.
        target = target or os.environ.get("TRAINGUARD_TARGET") or "127.0.0.1:7474"
        self.transport = Transport(target, deadline)
        self.connection = Connection(self.transport, failure_mode, self.deadline, warn_every, self.counters, run)
        answers.open_run(self, open_deadline if open_deadline is not None else max(10.0, self.deadline))
        self.sender = ReportSender(self.transport, lambda fut: answers.on_report_result(self, fut),
                                   process=for_transport(report_process, self.transport, self.device_gate, self.device))
        lifecycle.opened(self)  # another live Guard of this process on the run; stale wrappers follow this one

    @property
    def lr_scale(self):
        """The LR cut in force after rollbacks (1.0: none). Updates made through an optimizer run at it
        whatever sets the LR (lrcut); a manual update without one multiplies its rate by it."""
        return self.recovery.lr.scale

    @property
    def scaler_on(self):
        """Whether a GradScaler is in use (given and enabled)."""
        return self.scaler is not None and self.scaler.is_enabled()

    @property
    def _multi_gate(self):
        return self.gated.multi

    @property
    def state(self):
        """The client's ClientState: online, gated, offline or paused."""
        return self.connection.state

    # ------------------------------------------------------------------ the sidecar's answers

    def _void_in_flight(self):
        """After a rollback: verdicts still in flight for pre-rollback steps no longer apply."""
        with self._lock:
            self.generation += 1
            self._late = None

    # ------------------------------------------------------------------ per step

    def step(self, step, loss, replay=None, data_position=None):
        """Measures this step, gets its verdict (locally or from the sidecar), applies it, returns it.

        ``replay``: a callable that runs forward and backward on this step's batch again and returns
        the loss; a faulty step is then replayed once to classify the fault (docs/client.md,
        Recovery). ``data_position``: where the data stands after this step's batch (default
        step + 1); in-memory snapshots record it."""
        step = step_args.checked(step, loss)
        if self._closed:
            return lifecycle.closed_step(self, step)
        self.every_rank.check()
        self.step_checks.before_step(self)  # an optimizer in backward, a model cast since (loop_updates)
        step = self.numbering.guard_step(step, self.last_step)
        self.loop_updates.note_last()  # the last verdict's update, if the loop made it without an optimizer step
        self.recovery.begin(step, data_position, replay)
        now = time.perf_counter()
        step_time, self._step_t0 = now - self._step_t0, now
        self.counters["steps"] += 1
        if self.connection.paused:  # detached: the step is neither measured nor judged
            self.backward_gate.discard()
            return self._finish(step, Verdict(step, Action.APPLY, reasons=["guard paused"], decided_locally=True))
        if self.connection.reopen_due():
            answers.reopen(self)
        if self.device_gate:
            self.gated.await_verdicts(step)
        with self._lock:
            late, self._late = self._late, None
            async_err, self._async_error = self._async_error, None
        host_agreed = self._multi_gate and (self.gated.agreed_host_path() or momentum_unborn(self.optimizer))
        if self.device_gate:  # the last gated step was non-finite: replay it now (its weights are untouched)
            loss = self.gated.replay_previous(step, loss, replay, suppress=late is not None)
        if self._multi_gate and not host_agreed:
            # Every rank takes the same path (agreed one step ahead); what this rank needs the sidecar
            # for waits one step, and the ranks then take the host path together.
            need = (late is not None or async_err is not None or self.connection.offline
                    or self.bounds is None or not self.bounds.usable(step + 1))
            with self._lock:
                if late is not None and (self._late is None or late.action > self._late.action):
                    self._late = late
                if async_err is not None and self._async_error is None:
                    self._async_error = async_err
            return self._finish(step, self.gated.step(step, loss, step_time, need_host=need, replay=replay))
        if late is None and async_err is None and self._one_rank_gate_open(step):
            return self._finish(step, self.gated.step(step, loss, step_time, replay=replay))
        self.backward_gate.discard()
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
        verdict, gnorm = host_path.step(self, step, loss, step_time, late, replay)
        return self._finish(step, verdict, gnorm=gnorm)

    def _one_rank_gate_open(self, step):
        """One rank on the device gate, online, with bounds valid for ``step``: the step can be gated
        without the sidecar (unless a late verdict or a failed report is pending)."""
        return (self.device_gate and not self._multi_gate and not self.connection.offline
                and self.bounds is not None and self.bounds.usable(step) and not momentum_unborn(self.optimizer))

    def gate_on_backward(self, loss, anchor=None):
        """Call before ``loss.backward()`` in a loop that reads the loss on the host before ``step()``
        (logging, the HF Trainer): the step is measured and gated when backward ends, while the GPU
        is still busy, instead of after that read. ``step()`` uses it only if the gradients are still
        the ones measured (backward_gate). ``loss=None`` with ``anchor`` (a tensor the backward passes
        through): the step is judged without a loss. Returns whether it armed (device gate, one rank,
        no GradScaler)."""
        return self.backward_gate.arm(loss, anchor)

    # ------------------------------------------------------------------ applying verdicts

    def _finish(self, step, verdict, gnorm=None, error=None):
        if isinstance(verdict, tuple):
            verdict, error = verdict
        if dist_agree.is_initialized() and self.world_size > 1 and not verdict.device_gated:
            need = self.connection.offline or self.bounds is None or not self.bounds.usable(step + 1)
            verdict, error, self.gated.host_next = dist_agree.agree(self, verdict, error, need_host=need)
        self.last_verdict = verdict
        if not isinstance(error, SidecarUnavailable):  # a step never judged: a fail-closed loop may take it again
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
        return wrap_(self, obj)

    def next_step(self):
        """The step the loop is in: the one after the last ``step()`` (numbered as the loop numbers them)."""
        return 0 if self.last_step is None else self.last_step + 1

    def _verdict_for_update(self, auto=True):
        """The verdict an optimizer update about to run must obey. With ``auto`` and no
        ``step()`` since the last update, the step is measured and judged now (loss absent)."""
        if not self._pending_update and auto:
            self.step(self.numbering.loop_step(self.next_step()), None)
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
        self.recovery.after_update(v.step if v else None)  # snapshots, RNG for a replay: as after optimizer_step()

    def pause(self):
        """Detaches the guard until ``resume()``: waits for queued reports, removes the forward hooks
        and the optimizer's device gate, so the optimizer steps as if unguarded. ``step()`` while
        paused returns APPLY without measuring."""
        lifecycle.pause(self)

    def resume(self):
        lifecycle.resume(self)

    # ------------------------------------------------------------------ checkpoints and validation

    def save_checkpoint(self, directory, step, data_position=0, extra=None):
        """Saves model (safetensors), optimizer/scheduler/scaler/client state (torch.save) and
        registers the weights with the sidecar. Returns the sidecar's checkpoint dict (or None)."""
        lifecycle.refuse_if_closed(self, "save_checkpoint()")
        return checkpointing.save(self, directory, step, data_position, extra)

    def checkpoint_saved(self, path_or_dir_or_files, step, data_position=0):
        """Registers a checkpoint that other code wrote (torch.save, Lightning, DCP, Trainer) with the
        sidecar and records it for rollback. Returns the sidecar's checkpoint dict (or None)."""
        lifecycle.refuse_if_closed(self, "checkpoint_saved()")
        return checkpointing.checkpoint_saved(self, path_or_dir_or_files, step, data_position)

    def load_checkpoint(self, path_or_step):
        """Restores model/optimizer/scheduler/scaler/client state; returns the side file's dict."""
        return checkpointing.load(self, path_or_step)

    def is_bad_batch(self, data_position):
        """Whether the batch at ``data_position`` failed DETERMINISTICALLY on replay: a loop that
        re-reads data after a rollback skips it."""
        return int(data_position) in self.recovery.bad_positions

    def validation(self, model=None, step=None, restore=True, runs_anyway=False):
        """``with guard.validation(model) as v: if v.allowed: ...`` — ``v.allowed`` says whether the
        sidecar allows validation now (a refusal is logged once per reason); afterwards the model is
        audited and, by default, restored. ``runs_anyway``: a framework's pass that runs whatever the
        answer, audited and restored in full. See validation.py."""
        if self._closed:  # nothing to ask or to report to: the validation runs unguarded
            return contextlib.nullcontext(ValidationSession(True, "guard closed"))
        return ValidationContext(self, model or self.model, step, restore, runs_anyway)

    # ------------------------------------------------------------------ state and lifecycle

    def state_dict(self):
        """The client's state for the trainer's own checkpoint (see client_state.py)."""
        return client_state.state_dict(self)

    def load_state_dict(self, state):
        client_state.load_state_dict(self, state)

    def heartbeat(self, step, phase="STEP"):
        return lifecycle.heartbeat(self, step, phase)

    def flush(self, timeout=None):
        """Waits for the queued reports' verdicts and snapshot registrations (each at most ``timeout``)."""
        timeout = self.deadline * 4 if timeout is None else timeout
        return self.sender.flush(timeout) and self.recovery.registrar.flush(timeout)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close("training finished" if exc_type is None else f"training ended by {exc_type.__name__}",
                   close_run=lifecycle.ends_the_run(exc))
        return False

    def close(self, reason="training finished", close_run=True):
        """Flushes the reports, closes the run (unless ``close_run`` is False: a restart resumes it) and
        removes hooks and gate. Idempotent."""
        lifecycle.close(self, reason, close_run)

