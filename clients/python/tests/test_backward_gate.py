"""Measuring and gating at the end of backward (Guard.gate_on_backward), against the real sidecar jar,
on the CPU (fused AdamW honours the device gate there as on CUDA): healthy steps end with the same
weights as gating at step(); a NaN step is skipped; a measurement that no longer describes the
gradients (changed in place, reassigned or moved to other storage after backward, a backward that was
not armed) is not used,
and the step is measured again."""
import os
import time

import pytest
import torch

from trainguard.guard import Guard
from trainguard.transport import ReportSender
from models import MLP, batch, weights_finite

pytestmark = pytest.mark.torch2  # fused AdamW on the CPU

NAN = float("nan")


def train(sidecar, name, steps=8, armed=True, between=None, nan_steps=(), micro=1):
    """A fused-AdamW loop on the device gate. ``between(step, model)``: what the loop does to the
    gradients between backward and guard.step. ``micro``: micro-batches per step (each one armed)."""
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = Guard(model, opt, name, target=sidecar.target, deadline=5.0, device_gate=True)
    verdicts = []
    for step in range(steps):
        for m in range(micro):
            x, y = batch(step * micro + m)
            loss = torch.nn.functional.mse_loss(model(x), y) / micro
            if step in nan_steps:
                loss = loss * NAN
            if armed:
                assert g.gate_on_backward(loss)
            loss.backward()
        if between is not None:
            between(step, model)
        before = [p.detach().clone() for p in model.parameters()]
        v = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model), f"non-finite weights after step {step}"
        if not v.should_step:
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        verdicts.append(v.action.name)
    g.flush(5)
    out = {"weights": [p.detach().clone() for p in model.parameters()], "verdicts": verdicts,
           "early": dict(g.backward_gate.counters), "counters": dict(g.counters)}
    g.close()
    return out


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_measured_at_backward_end_gives_the_same_weights_as_measured_at_step(sidecar):
    # prevents: the early measurement changing what a healthy run's updates are
    early = train(sidecar, "bwd-early")
    late = train(sidecar, "bwd-late", armed=False)
    assert early["early"] == {"measured": 8, "used": 8, "stale": 0, "dropped": 0}
    assert late["early"]["measured"] == 0
    assert early["counters"]["device_gated_steps"] == 8
    assert same(early["weights"], late["weights"])


def test_a_nan_step_measured_at_backward_end_is_skipped(sidecar):
    # prevents: the early path installing a gate that lets a NaN update through
    out = train(sidecar, "bwd-nan", nan_steps=(3,))
    # after the fault the sidecar may have a step decided on the host: its measurement is dropped
    early = out["early"]
    assert early["stale"] == 0 and early["used"] >= 5 and early["used"] + early["dropped"] == 8, early
    assert out["counters"]["skips"] == 1


def test_gradients_poisoned_in_place_after_backward_are_measured_again(sidecar):
    # prevents: a stale measurement (taken before an in-place change) letting NaN gradients through
    def poison(step, model):
        if step == 4:
            model.out.weight.grad.mul_(NAN)
    out = train(sidecar, "bwd-inplace", between=poison)
    assert out["early"] == {"measured": 8, "used": 7, "stale": 1, "dropped": 0}
    assert out["counters"]["skips"] == 1


def test_reassigned_gradients_are_measured_again(sidecar):
    # prevents: the measurement describing tensors the optimizer no longer reads
    def swap(step, model):
        if step == 2:
            model.inp.weight.grad = torch.full_like(model.inp.weight, NAN)
    out = train(sidecar, "bwd-reassign", between=swap)
    assert out["early"] == {"measured": 8, "used": 7, "stale": 1, "dropped": 0}
    assert out["counters"]["skips"] == 1


def test_gradients_moved_to_new_storage_are_measured_again(sidecar):
    # prevents: ``grad.data = ...`` (same tensor, same version, other memory) leaving a measurement,
    # and the in-place clip that writes through its addresses, on memory the optimizer no longer reads
    def move(step, model):
        if step == 5:
            model.out.weight.grad.data = torch.full_like(model.out.weight, NAN)
    out = train(sidecar, "bwd-storage", between=move)
    assert out["early"] == {"measured": 8, "used": 7, "stale": 1, "dropped": 0}
    assert out["counters"]["skips"] == 1


def test_clipping_in_place_after_backward_uses_the_clipped_gradients(sidecar):
    # prevents: the verdict and the clip divisor computed on gradients the loop then rescaled
    def clip(step, model):
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    early = train(sidecar, "bwd-clip", between=clip)
    late = train(sidecar, "bwd-clip-late", armed=False, between=clip)
    assert early["early"] == {"measured": 8, "used": 0, "stale": 8, "dropped": 0}
    assert same(early["weights"], late["weights"])


def test_gradient_accumulation_uses_the_last_micro_batch_measurement(sidecar):
    # prevents: a measurement of a partial gradient sum deciding the step
    early = train(sidecar, "bwd-accum", micro=3, steps=5)
    late = train(sidecar, "bwd-accum-late", armed=False, micro=3, steps=5)
    assert early["early"] == {"measured": 15, "used": 5, "stale": 0, "dropped": 10}
    assert same(early["weights"], late["weights"])


def test_a_detached_cycle_loss_armed_on_the_last_micro_batchs_loss_is_measured_and_used(sidecar):
    # prevents: an accumulation cycle's loss (the sum of its micro-batches', detached) refused, or the
    # step measured with the last micro-batch's loss instead of the one step() is given
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = Guard(model, opt, "bwd-cycle-loss", target=sidecar.target, deadline=5.0, device_gate=True)
    for step in range(4):
        total = None
        for m in range(3):
            x, y = batch(step * 3 + m)
            loss = torch.nn.functional.mse_loss(model(x), y) / 3
            total = loss.detach() if total is None else total + loss.detach()
            if m == 2:  # the hook on the micro-batch's loss, which backward passes through
                assert g.gate_on_backward(total, loss)
            loss.backward()
        g.step(step, total)
        assert g.gated.last.host.tolist()[0] == pytest.approx(total.item(), rel=1e-6)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    assert g.backward_gate.counters == {"measured": 4, "used": 4, "stale": 0, "dropped": 0}
    g.close()


def test_arming_is_refused_where_the_step_cannot_be_measured_early(sidecar):
    # prevents: a host-path guard installing a device gate from backward
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)  # not fused: the host path
    g = Guard(model, opt, "bwd-host", target=sidecar.target, deadline=5.0)
    x, y = batch(0)
    loss = torch.nn.functional.mse_loss(model(x), y)
    assert not g.gate_on_backward(loss)
    loss.backward()
    assert g.backward_gate.counters["measured"] == 0
    assert g.step(0, loss).should_step
    g.close()
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = Guard(model, opt, "bwd-no-bounds", target=sidecar.target, deadline=5.0, device_gate=True)
    g.bounds = None  # the step will go to the host path (as when bounds expired or the sidecar is away)
    loss = torch.nn.functional.mse_loss(model(x), y)
    assert not g.gate_on_backward(loss)
    g.close()


class HeldLoop:
    """A fused-AdamW loop armed at backward on the device gate, for the report hold: the hold made
    long (no test waits it out) and, unless given, no wait for verdicts (``verdict_lag=None``), so
    only what the hold's mechanism releases reaches the sidecar early."""

    def __init__(self, sidecar, run, monkeypatch, verdict_lag=None):
        monkeypatch.setattr(ReportSender, "HOLD_S", 30.0)
        torch.manual_seed(0)
        self.run, self.sidecar = run, sidecar
        self.model = MLP()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2, fused=True)
        self.g = Guard(self.model, self.opt, run, target=sidecar.target, deadline=5.0, device_gate=True,
                       verdict_lag=verdict_lag)

    def reported(self):
        from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
        return self.g.transport.call("GetRun", pb.GetRunRequest(run_id=self.run)).run.steps_reported

    def backward(self, step, arm=True, release=False):
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        if arm:
            assert self.g.gate_on_backward(loss)
        elif release:
            self.g.backward_gate.release_on(loss)
        loss.backward()
        return loss

    def update(self, step, loss):
        v = self.g.step(step, loss)
        self.g.optimizer_step()
        self.opt.zero_grad(set_to_none=True)
        return v

    def wait_reported(self, n, within=5.0):
        t0 = time.monotonic()
        while self.reported() < n and time.monotonic() - t0 < within:
            time.sleep(0.005)
        return self.reported()


def test_a_step_measured_at_backward_end_is_reported_when_the_next_backward_starts(sidecar, monkeypatch):
    # prevents: the report's Python work landing right after the loop's loss read (on the critical
    # path) instead of while the next backward runs, or a held report never reaching the sidecar
    loop = HeldLoop(sidecar, "bwd-held", monkeypatch)
    for step in range(3):
        loss = loop.backward(step)
        loop.g.step(step, loss)
        # staged when backward ended: the host copy holds this step's loss
        assert loop.g.gated.last.host.tolist()[0] == pytest.approx(loss.item(), rel=1e-6)
        loop.g.optimizer_step()
        loop.opt.zero_grad(set_to_none=True)
        assert loop.wait_reported(step, within=0.5) == step  # this step's report is held
        time.sleep(0.05)
        assert loop.reported() == step
        loop.backward(step + 1)  # the next backward lets it go
        assert loop.wait_reported(step + 1) == step + 1
        loop.g.backward_gate.discard()  # that backward was only for the release
        loop.opt.zero_grad(set_to_none=True)
    assert loop.g.backward_gate.counters["used"] == 3
    loop.g.close()


def test_a_held_report_whose_verdict_is_awaited_is_sent_at_once(sidecar, monkeypatch):
    # prevents: step() waiting out its deadline (and going offline) for a report still held
    loop = HeldLoop(sidecar, "bwd-held-await", monkeypatch, verdict_lag=1)
    loop.update(0, loop.backward(0))                # measured at backward end: its report held
    t0 = time.monotonic()
    loop.update(1, loop.backward(1, arm=False))     # not armed: nothing releases it but the wait
    assert time.monotonic() - t0 < 2.0
    assert loop.g.counters["sidecar_failures"] == 0 and loop.reported() >= 1
    loop.g.close()


def test_an_unmeasured_micro_batch_backward_releases_the_held_report(sidecar, monkeypatch):
    # prevents: with gradient accumulation, the held report waiting for the cycle's last micro-batch
    loop = HeldLoop(sidecar, "bwd-held-micro", monkeypatch)
    loop.update(0, loop.backward(0))
    assert loop.reported() == 0
    loop.backward(1, arm=False, release=True)       # the next cycle's first micro-batch
    assert loop.wait_reported(1) == 1
    loop.g.close()


def test_a_checkpoint_is_registered_after_the_held_reports_of_its_steps(sidecar, monkeypatch):
    # prevents: a checkpoint overtaking the held report of its own step, so that the sidecar takes it
    # for the run's start state (known-good at once)
    from trainguard.safetensors_io import write_safetensors
    loop = HeldLoop(sidecar, "bwd-held-ckpt", monkeypatch)
    loop.update(0, loop.backward(0))
    assert loop.reported() == 0
    root = os.path.join(sidecar.checkpoint_root, "bwd-held-ckpt")
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "model.safetensors")
    write_safetensors(loop.model.state_dict(), path)
    c = loop.g.checkpoint_saved(path, 0)
    assert c is not None and c["state"] != "KNOWN_GOOD"
    assert loop.reported() == 1
    loop.g.close()
