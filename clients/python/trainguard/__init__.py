"""trainguard: the trainer side of the trainguard sidecar.

    guard = trainguard.Guard(model, optimizer, run="my-run", target="127.0.0.1:7474")
    for step, batch in enumerate(loader):
        loss = model(batch).mean(); loss.backward()
        guard.step(step, loss)          # between backward() and optimizer.step()
        guard.optimizer_step(); optimizer.zero_grad()

torch is imported by Guard's module only; no web framework is ever imported.

Module map (one concern each; ``Guard`` in guard.py is a façade over them):

  guard.py         Guard: wires the parts below, picks each step's path (host / device gate), public API
  gated.py         the device-gated step (no host sync), its multi-rank agreement, the replay of a
                   gated step's fault one step later
  gate_graph.py, grad_table.py   the device gate's kernels as one CUDA graph; gradients by address table
  backward_gate.py the device gate measured when backward ends (gate_on_backward), checked at step()
  late_skips.py    the device's skips as the host learns of them: the LR schedule held back, callbacks told
  host_path.py     the host-path step: one packed read, replay at once, local / sidecar / offline verdict
  answers.py       the sidecar's asynchronous answers: OpenRun, verdicts of async reports (late ROLLBACK/HALT)
  client_state.py  Guard.state_dict / load_state_dict (round-trips through the trainer's checkpoint)
  connection.py    client state machine ClientState (ONLINE, GATED, OFFLINE, PAUSED), OpenRun,
                   failure modes (fail-open warnings, fail-closed SidecarUnavailable), reconnect
  run_setup.py     what OpenRun sends: policy overrides, model description, precision setup
  measure.py       measuring a step: StepMeter (packed one-read on the host path, on-device stats),
                   DeviceGate (found_inf / grad_scale on a fused optimizer, pinned staging)
  stats.py         device statistics: grad norms, ModuleWatch forward hooks
  watch_names.py   which modules are watched by default (auto_watch)
  rules.py         local decision rules, pure functions (bounds, local/offline verdicts, gate clip)
  report.py        the one place a StepReport is built
  apply.py         applying a verdict (clip, skip, rollback, halt) and the guarded optimizer step
  rollback.py      rollback to a checkpoint, LR cut, re-warm
  numbering.py     the loop's step numbers after a rollback it did not jump back for
  lifecycle.py     pause / resume / close of a Guard
  protect.py       update protection: undo an optimizer.step() that made weights non-finite
  checkpointing.py Guard.save_checkpoint / load_checkpoint and RegisterCheckpoint
  validation.py    validation gate (ValidationContext: `with guard.validation(m) as v: if v.allowed:`)
  audit.py         validation audit: ModelSnapshot (tensors, wiring, attribute state, RNG), diff, restore
  remembered.py    how the audit remembers, compares and restores one attribute value
  recovery.py      in-memory snapshots (snapshot.py), fault replay (replay.py), LR cuts (lrcut.py)
  rng.py           the RNG state a step depends on (capture, compare, restore): audit and replay
  distributed.py   cross-rank agreement on the verdict
  transport.py     gRPC stubs, deadlines, the ordered ReportSender thread
  report_process.py  the ReportStep call made by a child process (off the training process's GIL)
  verdict.py, errors.py   the plain-Python types user code sees
  testing.py       Sidecar: launches the sidecar jar (tests, examples; jar from TRAINGUARD_JAR or jar=)
  wrap.py          guard.wrap(optimizer) / guard.wrap(scheduler), ParametersOnly (manual update loops)
  lightning.py     Lightning Callback (extra "lightning");  hf.py  Trainer callback + Accelerate (extra "hf")
  lightning_validation.py  the callback's validation passes: gated, audited, undone (also outside fit)
  hf_loss_filter.py  the Trainer's NaN/Inf loss filter on the device (TrainguardCallback.attach)
  hf_evaluation.py   the Trainer's evaluations audited and undone (evaluate(), predict())
  hf_state.py      the TrainerState a rollback and a resume need: the LR cut, the best-model record
  checksum.py, safetensors_io.py   tg1 checksums, safetensors read/write without the package
"""
from .errors import RunRefused, SidecarUnavailable, TrainguardError, TrainingHalted
from .verdict import Action, LocalBounds, RollbackPlan, Verdict

__version__ = "0.1.0"
__all__ = ["Guard", "Action", "Verdict", "RollbackPlan", "LocalBounds", "TrainguardError", "RunRefused",
           "TrainingHalted", "SidecarUnavailable", "NonFiniteUpdate", "Sidecar"]


def __getattr__(name):  # lazy: `import trainguard` does not import torch until Guard is used
    if name in ("Guard", "NonFiniteUpdate"):
        from . import guard
        return getattr(guard, name)
    if name == "Sidecar":
        from .testing import Sidecar
        return Sidecar
    # submodules the docs name as trainguard.<module>.<function>, loaded on first use (a restore_hook's
    # trainguard.checkpoints.restore in a process that never called checkpoint_saved raised AttributeError)
    if name in ("lightning", "hf", "testing", "wrap", "checkpoints", "checksum", "replay"):
        import importlib
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(name)
