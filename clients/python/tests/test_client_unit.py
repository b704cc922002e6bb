"""Client logic against a small real-gRPC stand-in (fake_sidecar.py); no JVM needed."""
import logging
import math
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import trainguard
from trainguard import Action
from trainguard.guard import Guard, NonFiniteUpdate
from trainguard.report_process import ReportProcess
from fake_sidecar import FakeSidecar
from models import batch, make, train, weights_finite


@pytest.fixture
def fake():
    s = FakeSidecar().start()
    yield s
    s.stop()


def nan_at(steps, kind="loss"):
    steps = set(steps)  # each poisoned batch is seen once: a rollback replays clean data

    def inject(step, x, y, model):
        if step in steps:
            steps.discard(step)
            if kind == "loss":
                y = y.clone(); y[0, 0] = float("nan")
            else:
                x = x.clone(); x[0, 0] = float("inf")
        return x, y
    return inject


def test_target_defaults_to_the_manifests_environment_variable(fake, monkeypatch):
    # prevents: a pod whose manifest sets TRAINGUARD_TARGET still dialling 127.0.0.1:7474
    monkeypatch.setenv("TRAINGUARD_TARGET", fake.target)
    model, opt = make()
    g = Guard(model, opt, "env-target")
    train(g, model, opt, 3)
    assert g.flush(5)
    assert [r.step for r in fake.reports] == [0, 1, 2]
    g.close()


def test_healthy_run_decides_every_step_locally(fake):
    # A healthy step must never wait for the sidecar: all decisions are local, all reports still arrive.
    model, opt = make()
    g = Guard(model, opt, "healthy", target=fake.target)
    vs = train(g, model, opt, 30)
    assert g.flush(5)
    assert all(v.decided_locally and v.action in (Action.APPLY, Action.CLIP) for v in vs)
    assert [r.step for r in fake.reports] == list(range(30))
    assert all(r.decided_locally for r in fake.reports)
    assert fake.reports[0].module_stats.names[:2] == ["inp", "blocks.0"]
    g.close()


def test_nan_loss_is_skipped_before_the_update(fake):
    # A NaN loss must not reach the weights; the step is skipped and the weights stay as they were.
    model, opt = make()
    g = Guard(model, opt, "nanloss", target=fake.target)
    seen = {}
    train(g, model, opt, 10, inject=nan_at({5}), on_verdict=lambda s, v: seen.setdefault(s, v))
    assert seen[5].action == Action.SKIP and not seen[5].decided_locally
    assert [v.action for s, v in seen.items() if s != 5].count(Action.SKIP) == 0
    assert g.counters["skips"] == 1
    g.close()


def test_nan_inside_module_names_that_module(fake):
    # The verdict must name the first module (forward order) whose output went non-finite.
    model, opt = make()
    g = Guard(model, opt, "nanmod", target=fake.target)

    def poison(mod, inp, out):
        return out * float("nan") if poison.on else out
    poison.on = False
    h = model.blocks[1][0].register_forward_hook(poison)  # inside block 1
    train(g, model, opt, 3)
    poison.on = True
    v = train(g, model, opt, 4, start=3)[0]
    h.remove()
    assert v.action == Action.SKIP
    assert v.first_nonfinite_module == "blocks.1"
    g.close()


def test_clip_verdict_scales_grads_to_threshold(fake):
    # CLIP must leave the applied gradient at the threshold.
    model, opt = make(opt="sgd", lr=0.0)
    g = Guard(model, opt, "clip", target=fake.target)
    x, y = batch(0)
    loss = torch.nn.functional.mse_loss(model(x) * 100, y)
    loss.backward()
    v = g.step(0, loss)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert v.action == Action.CLIP and abs(float(norm) - 1.0) < 1e-3
    g.close()


def test_unreachable_sidecar_fail_open_trains_on_and_still_skips_nan():
    # Fail-open: no sidecar costs at most the deadline, training goes on, NaN is still never applied.
    model, opt = make()
    t0 = time.monotonic()
    with pytest.warns(RuntimeWarning):
        g = Guard(model, opt, "open", target="127.0.0.1:1", deadline=0.2, open_deadline=0.5)
    vs = train(g, model, opt, 8, inject=nan_at({3}))
    assert time.monotonic() - t0 < 5
    assert vs[3].action == Action.SKIP and vs[3].degraded
    assert g.counters["sidecar_failures"] >= 1


def test_unreachable_sidecar_fail_closed_raises():
    # Fail-closed: a clear error instead of training unguarded.
    model, opt = make()
    with pytest.raises(trainguard.SidecarUnavailable, match="failure_mode='closed'"):
        Guard(model, opt, "closed", target="127.0.0.1:1", deadline=0.2, open_deadline=0.5, failure_mode="closed")


def test_slow_sidecar_never_stalls_longer_than_deadline():
    # A sidecar that answers in 2 s must cost a blocking step at most ~the deadline.
    s = FakeSidecar(delay=2.0).start()
    try:
        model, opt = make()
        g = Guard(model, opt, "slow", target=s.target, deadline=0.2, mode="sync")
        x, y = batch(0)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        t0 = time.monotonic()
        with pytest.warns(RuntimeWarning):
            v = g.step(0, loss)
        assert time.monotonic() - t0 < 0.6
        assert v.degraded
    finally:
        s.stop()


def test_refused_run_raises_run_refused():
    s = FakeSidecar(refuse="EPS_UNDERFLOW: eps 1e-08 is 0 in float16").start()
    try:
        model, opt = make()
        with pytest.raises(trainguard.RunRefused, match="EPS_UNDERFLOW"):
            Guard(model, opt, "refused", target=s.target)
    finally:
        s.stop()


def test_validation_patch_and_reseed_is_detected_and_undone(fake):
    # Hallo bug A: validation re-patches a block's forward and reseeds the RNG; both are undone.
    model, opt = make()
    g = Guard(model, opt, "val", target=fake.target)
    train(g, model, opt, 3)
    orig_forward = model.blocks[0].forward
    rng = torch.get_rng_state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with g.validation(model) as v:
        model.eval()
        model.blocks[0].forward = lambda x: x * 0
        torch.manual_seed(42)
        with torch.no_grad():
            v.loss = float(model(batch(99)[0]).mean())
    assert v.allowed and v.restored
    assert v.audit["wiring_changed"] and v.audit["rng_changed"] and v.audit["dtype_device_mode_changed"]
    assert any("blocks.0.forward replaced" in d for d in v.audit["details"])
    assert model.blocks[0].forward == orig_forward and "forward" not in model.blocks[0].__dict__
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    assert fake.validations[-1].audit.wiring_changed and fake.validations[-1].audit.restored
    g.close()


def test_validation_body_skipped_when_not_allowed(fake):
    # The loop skips a refused validation with `if v.allowed:` (no trace hook skips the body any more).
    model, opt = make()
    g = Guard(model, opt, "val-skip", target=fake.target)
    ran = []
    with g.validation(model, step=0) as v:
        if v.allowed:
            ran.append(1)
    assert not v.allowed and ran == []
    with g.validation(model, step=5) as v:
        if v.allowed:
            ran.append(2)
    assert v.allowed and ran == [2] and v.audit["details"] == []
    g.close()


def test_rollback_restores_checkpoint_and_scales_lr(fake, tmp_path):
    # After max_consecutive_skips the sidecar orders ROLLBACK: weights, optimizer and LR follow the plan.
    model, opt = make()
    g = Guard(model, opt, "rollback", target=fake.target)
    train(g, model, opt, 5)
    ck = g.save_checkpoint(str(tmp_path), 4, data_position=5)
    assert ck["state"] == "CHECKPOINT_STATE_KNOWN_GOOD"
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    train(g, model, opt, 8, start=5)
    vs, restored = [], []

    def seen(step, v):
        vs.append(v)
        if v.action == Action.ROLLBACK:
            restored.append(all(torch.equal(saved[k], t) for k, t in model.state_dict().items()))
    train(g, model, opt, 12, start=8, inject=nan_at(set(range(8, 12))), on_verdict=seen)
    rb = [v for v in vs if v.action == Action.ROLLBACK]
    # the loop stood at 12 after the trigger's batch: the client resumes past it, whatever the fake's skip of 2
    assert rb and rb[0].step == 11 and rb[0].resume_step == 5 and rb[0].rollback.resume_position == 12
    assert restored == [True]
    # no torch scheduler: the cut is applied at each update (lrcut), the group keeps the loop's rate
    assert math.isclose(g.lr_scale, 0.5) and math.isclose(opt.param_groups[0]["lr"], 1e-2)
    g.close()


def test_state_dict_round_trips(fake, tmp_path):
    model, opt = make()
    g = Guard(model, opt, "state", target=fake.target)
    train(g, model, opt, 6, inject=nan_at({2}))
    g.save_checkpoint(str(tmp_path), 5)
    g.numbering.shift = 7  # a loop that kept counting after a rollback: renumbered after a restart too
    st = g.state_dict()
    g2 = Guard(model, opt, "state", target=fake.target)
    g2.load_state_dict(st)
    assert g2.state_dict() == st and g2.counters["skips"] == 1 and 5 in g2.checkpoints
    assert g2.numbering.guard_step(20) == 13
    torch.save(st, str(tmp_path / "g.pt"))
    assert torch.load(str(tmp_path / "g.pt")) == st
    g.close(); g2.close()


@pytest.mark.torch2  # torch 1.13 has no fp16 matmul nor fp16 AdamW kernels on the CPU
def test_pure_fp16_adamw_update_is_undone_and_named(fake):
    # Hallo bug B: fp16 weights, AdamW eps=1e-8, no master copy -> the first update is non-finite.
    model, opt = make(dtype=torch.float16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-8)
    g = Guard(model, opt, "fp16", target=fake.target)
    assert g.protect_update
    x, y = batch(0)
    x = x.half() * 1e-3
    loss = torch.nn.functional.mse_loss(model(x).float(), y)
    loss.backward()
    g.step(0, loss)
    with pytest.raises(NonFiniteUpdate) as e:
        g.optimizer_step()
    assert e.value.module == "inp" and weights_finite(model)
    assert fake.inspected and "inp" in fake.inspected[0].tensors[0].name
    g.close()


def test_undone_update_restores_the_optimizer_state_of_earlier_steps(fake):
    # prevents: undoing a bad update leaving Adam's moments or step count from the bad step
    model, opt = make()
    g = Guard(model, opt, "undo-state", target=fake.target, protect_update=True)
    train(g, model, opt, 2)
    before_params = [p.detach().clone() for p in model.parameters()]
    before_state = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[p].items()}
                    for i, p in enumerate(model.parameters())}
    for group in opt.param_groups:
        group["lr"] = float("inf")  # finite gradients, non-finite update
    x, y = batch(2)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    g.step(2, loss)
    with pytest.raises(NonFiniteUpdate):
        g.optimizer_step()
    assert all(torch.equal(a, b) for a, b in zip(before_params, model.parameters()))
    for i, p in enumerate(model.parameters()):
        assert opt.state[p].keys() == before_state[i].keys()
        for k, v in before_state[i].items():
            assert torch.equal(opt.state[p][k], v) if torch.is_tensor(v) else opt.state[p][k] == v, (i, k)
    g.close()


def test_safetensors_writer_matches_the_format(tmp_path):
    from trainguard import safetensors_io as st
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).half(),
               "d": torch.tensor(True)}
    real = sys.modules.get("safetensors")
    sys.modules["safetensors.torch"] = None  # force the built-in writer/reader
    try:
        st.write_safetensors(tensors, str(tmp_path / "own.safetensors"))
        back = st.read_safetensors(str(tmp_path / "own.safetensors"))
    finally:
        del sys.modules["safetensors.torch"]
    assert all(torch.equal(tensors[k], back[k]) for k in tensors)
    try:
        from safetensors.torch import load_file
    except ImportError:
        return
    other = load_file(str(tmp_path / "own.safetensors"))
    assert all(torch.equal(tensors[k], other[k]) for k in tensors)


def test_import_pulls_no_web_framework():
    code = ("import sys, trainguard, trainguard.guard; "
            "bad=[m for m in ('flask','fastapi','starlette','aiohttp','django','tornado','uvicorn') if m in sys.modules]; "
            "assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_device_gate_needs_an_optimizer_that_honours_found_inf(fake):
    # Runs on every torch: a plain AdamW cannot skip on a device flag, so the gate must not be
    # used (auto) or must be refused (True) — never silently "gated" by a flag nothing reads.
    model, opt = make()
    g = Guard(model, opt, "gate-auto", target=fake.target)
    assert not g.device_gate
    with pytest.raises(ValueError, match="honours found_inf"):
        Guard(model, opt, "gate-forced", target=fake.target, device_gate=True)
    g.close()


@pytest.mark.torch2  # GradScaler on the CPU needs torch >= 2.3
def test_grad_scaler_loss_scale_is_reported_from_the_single_device_read(fake):
    # prevents: the loss scale reported wrong (or read with a second device sync per step)
    model, opt = make()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = Guard(model, opt, "scaled", target=fake.target, scaler=scaler)
    scales = []
    for step in range(3):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        scaler.scale(loss).backward()
        scales.append(scaler.get_scale())
        g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    assert g.flush(5)
    assert [r.loss_scale for r in fake.reports] == scales
    assert weights_finite(model)
    g.close()


def test_checksum_reference_matches_the_sidecars_known_values():
    # prevents: the Python tg1 drifting from the Java definition (same strings and values as
    # ContentHashTest.of_knownStrings_matchThePythonReference)
    from trainguard.checksum import hex64, tg1
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(100_000))
    assert hex64(tg1(b"")) == "0000000000000000"
    assert hex64(tg1(b"trainguard")) == "307a5862ae24af81"
    assert hex64(tg1(pattern)) == "dfd36bcd658d5fed"
    assert tg1(pattern[:-1]) != tg1(pattern) != tg1(pattern + b"\0")


def test_fp16_weights_whose_l2_norm_overflows_fp16_are_not_called_non_finite():
    # prevents: a false NonFiniteUpdate (the update undone, the run stopped) for finite fp16 weights:
    # 10,000 values of 1000 have an L2 norm of 1e5, above fp16's largest 65504
    from trainguard.protect import UpdateProtector
    model = torch.nn.Linear(100, 100, bias=False).half()
    with torch.no_grad():
        model.weight.fill_(1000.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    protector = UpdateProtector(model, opt)
    protector.check(protector.snapshot(), step=0)  # no raise
    with torch.no_grad():
        model.weight[3, 7] = float("nan")
    with pytest.raises(NonFiniteUpdate):
        protector.check(protector.snapshot(), step=1)


def test_a_float64_state_is_checked_in_one_foreach_pass(monkeypatch):
    # prevents: every snapshot's finiteness check of a state holding float64 going tensor by tensor
    # (an fp32 copy each) because the fused norm refuses to narrow float64 to float32
    from trainguard.tensors import all_finite
    monkeypatch.setattr(torch.linalg, "vector_norm", None)  # the per-tensor fallback would fail here
    state = [torch.full((4,), 1e10, dtype=torch.float64), torch.ones(3)]
    assert bool(all_finite(state))
    state[0][2] = float("inf")
    assert not bool(all_finite(state))


def test_no_thread_to_start_the_child_on_gives_it_up_once_and_loudly(monkeypatch, caplog):
    # prevents: a start that cannot get a thread failing silently, and every later call trying again
    real_start = threading.Thread.start
    tries = []

    def refuse(thread):
        if thread.name == "trainguard-report-process-start":
            tries.append(thread)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    proc = ReportProcess("unix:///nonexistent.sock")
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        assert not proc.start()
    assert not proc.usable and "can't start new thread" in caplog.text
    assert proc.call(b"", 1.0) is None and len(tries) == 1  # the caller sends it; no second try
    proc.close()


def test_a_halt_message_says_each_reason_once():
    v = trainguard.Verdict(3, trainguard.Action.HALT, reasons=["limit 3", "halted: limit 3; rolled back twice"])
    assert str(trainguard.TrainingHalted(v)).count("limit 3") == 1
