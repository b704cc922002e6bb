"""BatchNorm's running statistics across a skipped step, against the real sidecar jar: the forward of
a NaN batch writes NaN into them before anything is judged, and a skip must not keep that."""
import time

import pytest
import torch
from torch import nn

from models import batch, guarded_update
from trainguard import Action
from trainguard.guard import Guard

NAN_STEP = 6


def conv_net(momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32, momentum=momentum), nn.ReLU(), nn.Linear(32, 1))


def stats(model):
    bn = model[1]
    return bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()


def run(sidecar, guarded, device_gate=False, steps=10, momentum=0.1):
    """A plain loop over ``steps`` batches; the NAN_STEP batch is NaN. Unguarded, that batch is
    left out entirely (what a perfect skip would give). Returns the model and the verdicts."""
    model = conv_net(momentum)
    opt = (torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True) if device_gate
           else torch.optim.AdamW(model.parameters(), lr=1e-2))  # torch 1.13 knows no fused=
    g = Guard(model, opt, f"bn-{device_gate}-{time.time_ns()}", target=sidecar.target, deadline=5.0,
              device_gate=device_gate, replay=False, policy={"clip_mode": "OFF"}) if guarded else None
    actions = []
    for step in range(steps):
        x, y = batch(step)
        if step == NAN_STEP:
            if g is None:
                continue
            x = x * float("nan")
        guarded_update(g, opt, step, nn.functional.mse_loss(model(x), y), actions)
    if g is not None:
        g.close()
    return model, actions


@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
@pytest.mark.parametrize("device_gate", [False, pytest.param(True, marks=pytest.mark.torch2)],
                         ids=["host", "device_gate"])
def test_a_skipped_nan_batch_leaves_batchnorm_statistics_as_if_it_never_ran(sidecar, device_gate, momentum):
    # Prevents: a NaN batch skipped (weights untouched) whose forward had written NaN into
    # running_mean/var: training went on looking healthy and the model evaluated to NaN everywhere.
    # And its count kept in num_batches_tracked, by which BatchNorm(momentum=None) averages.
    want, _ = run(sidecar, guarded=False, device_gate=device_gate, momentum=momentum)  # the same optimizer
    got, actions = run(sidecar, guarded=True, device_gate=device_gate, momentum=momentum)
    if not device_gate:
        assert actions[NAN_STEP] == Action.SKIP
    for a, b in zip(stats(got), stats(want)):
        assert torch.equal(a, b)
    got.eval()
    assert torch.isfinite(got(batch(0)[0])).all()


class QueueNet(nn.Module):
    """MoCo's pattern in small: each training forward enqueues its batch's keys into a buffer queue (and moves
    a pointer buffer); the loss contrasts the batch with the queue, so NaN keys left there poison later steps."""

    def __init__(self, size=24, dim=4):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Linear(16, dim)
        self.register_buffer("queue", torch.randn(size, dim) * 0.1)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        k = self.net(x)
        logits = k @ self.queue.clone().t()  # as MoCo: the enqueue below writes the buffer in place
        if self.training:
            with torch.no_grad():
                n, p = k.shape[0], int(self.ptr)
                idx = (torch.arange(n) + p) % self.queue.shape[0]
                self.queue[idx] = k.detach()
                self.ptr.fill_((p + n) % self.queue.shape[0])
        return logits.logsumexp(dim=1).mean()


def queue_run(sidecar, guarded, step_buffers, device_gate=False, model=None, after_update=None, inspect=None,
              trained=None):
    model = model if model is not None else QueueNet()
    params = list(getattr(model, trained).parameters() if trained else model.parameters())
    opt = (torch.optim.AdamW(params, lr=1e-2, fused=True) if device_gate
           else torch.optim.AdamW(params, lr=1e-2))  # torch 1.13 knows no fused=
    inner = getattr(model, "_orig_mod", model)
    g = Guard(model, opt, f"queue-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
              device_gate=device_gate, policy={"clip_mode": "OFF"},
              step_buffers=[inner.queue, inner.ptr] if step_buffers else ()) if guarded else None
    actions = []
    for step in range(10):
        x, _ = batch(step)
        if step == NAN_STEP:
            if g is None:
                continue
            x = x * float("nan")
        if g is not None and inspect is not None:
            loss = model(x)
            loss.backward()
            actions.append(g.step(step, loss).action)
            inspect(step)  # right after the step was judged and settled
            g.optimizer_step()
            opt.zero_grad(set_to_none=True)
        else:
            guarded_update(g, opt, step, model(x), actions)
        if after_update is not None:
            after_update(step)
    if g is not None:
        g.close()
    return inner, actions


def test_buffers_given_as_step_buffers_are_put_back_after_a_skipped_step_as_if_it_never_ran(sidecar):
    # Prevents: a skipped NaN batch leaving its NaN keys in a MoCo-style queue, so the next steps were NaN
    # too and the run rolled back to its start
    want, _ = queue_run(sidecar, guarded=False, step_buffers=True)
    got, actions = queue_run(sidecar, guarded=True, step_buffers=True)
    assert actions[NAN_STEP] == Action.SKIP and all(a == Action.APPLY for a in actions[NAN_STEP + 1:]), actions
    assert torch.equal(got.queue, want.queue) and torch.equal(got.ptr, want.ptr)


@pytest.mark.parametrize("device_gate", [False, pytest.param(True, marks=pytest.mark.torch2)],
                         ids=["host", "device_gate"])
def test_buffers_a_training_forward_writes_are_found_and_put_back_after_a_skipped_step(sidecar, device_gate):
    # Prevents: a queue the forward writes, not named in step_buffers, keeping a skipped batch's NaN keys
    # (the next steps were NaN too and the run rolled back to its start)
    want, _ = queue_run(sidecar, guarded=False, step_buffers=False, device_gate=device_gate)
    got, actions = queue_run(sidecar, guarded=True, step_buffers=False, device_gate=device_gate)
    assert all(a == Action.APPLY for a in actions[NAN_STEP + 1:]), actions
    if not device_gate:
        assert actions[NAN_STEP] == Action.SKIP, actions
    assert torch.equal(got.queue, want.queue) and torch.equal(got.ptr, want.ptr)


class SpectralCritic(nn.Module):
    """A GAN critic under spectral norm: every training forward advances the power iteration, writing
    the parametrization's ``_u`` / ``_v`` buffers in place, whatever the batch holds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(torch.nn.utils.parametrizations.spectral_norm(nn.Linear(16, 32)), nn.ReLU(),
                                 nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).pow(2).mean()


@pytest.mark.torch2  # torch.nn.utils.parametrizations.spectral_norm: torch >= 1.14
def test_spectral_norms_power_iteration_is_put_back_after_a_skipped_step(sidecar):
    # Prevents: a skipped step's forward leaving its power-iteration update in _u/_v, so the guarded run's
    # critic normalized by other vectors than a run that never saw the batch
    want, _ = queue_run(sidecar, guarded=False, step_buffers=False, model=SpectralCritic())
    got, actions = queue_run(sidecar, guarded=True, step_buffers=False, model=SpectralCritic())
    assert actions[NAN_STEP] == Action.SKIP, actions
    for (name, a), (_, b) in zip(got.named_buffers(), want.named_buffers()):
        assert torch.equal(a, b), name
    for a, b in zip(got.parameters(), want.parameters()):
        assert torch.equal(a, b)


class AveragedNet(QueueNet):
    """A model whose loop keeps an average of a weight in a buffer after every update: a write outside
    the forward, which a skipped step must not undo."""

    def __init__(self):
        super().__init__()
        self.register_buffer("avg", torch.zeros(4, 16))


def test_a_buffer_the_loop_writes_after_the_update_keeps_that_write_across_a_skipped_step(sidecar):
    model, written = AveragedNet(), {}

    def average(step):
        with torch.no_grad():
            model.avg.mul_(0.5).add_(model.net.weight, alpha=0.5)
        written[step] = model.avg.clone()

    _, actions = queue_run(sidecar, guarded=True, step_buffers=False, model=model, after_update=average)
    assert actions[NAN_STEP] == Action.SKIP, actions
    # the skipped step's settling ran after the loop's write of the step before, and kept it
    assert not torch.equal(written[NAN_STEP - 1], written[NAN_STEP - 2])
    assert torch.equal(model.avg, written[9])


@pytest.mark.torch2
def test_a_compiled_model_handed_to_the_guard_has_its_forwards_writes_found(sidecar):
    want, _ = queue_run(sidecar, guarded=False, step_buffers=False)
    got, actions = queue_run(sidecar, guarded=True, step_buffers=False,
                             model=torch.compile(QueueNet(), backend="aot_eager"))
    assert actions[NAN_STEP] == Action.SKIP and all(a == Action.APPLY for a in actions[NAN_STEP + 1:]), actions
    assert torch.allclose(got.queue, want.queue) and torch.equal(got.ptr, want.ptr)


class RebindingQueue(QueueNet):
    def forward(self, x):
        k = self.net(x)
        if self.training:
            self.queue = torch.cat([k.detach(), self.queue])[: self.queue.shape[0]]  # a new tensor each step
        return (k @ self.queue.t()).logsumexp(dim=1).mean()


def test_a_forward_that_rebinds_its_buffer_is_told_to_write_it_in_place(sidecar, caplog):
    queue_run(sidecar, guarded=True, step_buffers=False, model=RebindingQueue())
    said = [r.getMessage() for r in caplog.records if "rebinds its buffer 'queue'" in r.getMessage()]
    assert len(said) == 1 and "in place" in said[0], said


def test_a_nan_batch_through_batchnorm_is_not_said_to_find_the_state_corrupt_before_it(sidecar, caplog):
    # Prevents: "buffer 1.running_mean was already non-finite before this step's update: skipping steps
    # cannot repair that" at every NaN batch: the step's own forward wrote it, and the skip puts it back
    _, actions = run(sidecar, guarded=True)
    assert actions[NAN_STEP] == Action.SKIP
    assert not [r for r in caplog.records if "already non-finite" in r.getMessage()]


class OldSpectralCritic(SpectralCritic):
    """The older API, still in many GAN codebases: the power iteration runs in a forward pre-hook the
    layer registered when it was built, before any hook registered later."""

    def __init__(self):
        nn.Module.__init__(self)
        torch.manual_seed(0)
        self.net = nn.Sequential(torch.nn.utils.spectral_norm(nn.Linear(16, 32)), nn.ReLU(), nn.Linear(32, 1))


@pytest.mark.torch2  # register_forward_pre_hook(prepend=True): torch >= 2.0
def test_the_older_spectral_norms_power_iteration_is_put_back_too(sidecar):
    want, _ = queue_run(sidecar, guarded=False, step_buffers=False, model=OldSpectralCritic())
    got, actions = queue_run(sidecar, guarded=True, step_buffers=False, model=OldSpectralCritic())
    assert actions[NAN_STEP] == Action.SKIP, actions
    for (name, a), (_, b) in zip(got.named_buffers(), want.named_buffers()):
        assert torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(got.parameters(), want.parameters()))


def test_statistics_the_loop_recomputes_between_steps_are_kept_across_a_skipped_step(sidecar):
    # Prevents: a skip putting back the statistics kept at the last step, undoing what the loop wrote
    # since (fvcore's PreciseBN recomputing running_mean/var after an update)
    model, written = conv_net(), {}

    def precise_bn(step):
        if step == NAN_STEP - 1:
            with torch.no_grad():
                model[1].running_mean.fill_(0.25)
                model[1].running_var.fill_(2.0)

    queue_run(sidecar, guarded=True, step_buffers=False, model=_Mse(model), after_update=precise_bn,
              inspect=lambda step: written.setdefault(step, (model[1].running_mean.clone(), model[1].running_var.clone())))
    mean, var = written[NAN_STEP]
    assert torch.equal(mean, torch.full_like(mean, 0.25)) and torch.equal(var, torch.full_like(var, 2.0))


class _Mse(nn.Module):
    """A regression net as queue_run trains it: its forward returns the loss."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return nn.functional.mse_loss(self.net(x), x[:, :1])


class MomentumKeys(nn.Module):
    """MoCo's key encoder: parameters nothing trains, moved by momentum in the forward
    (``param_k.data = m * param_k.data + (1 - m) * param_q.data``), then keys enqueued."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(16, 4), nn.Linear(16, 4)
        for p in self.k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", torch.randn(24, 4) * 0.1)

    def forward(self, x):
        with torch.no_grad():
            for pq, pk in zip(self.q.parameters(), self.k.parameters()):
                pk.data = pk.data * 0.9 + pq.data * 0.1
            keys = self.k(x)
        loss = (self.q(x) @ self.queue.clone().t()).logsumexp(dim=1).mean() + (self.q(x) - keys).pow(2).mean()
        with torch.no_grad():
            self.queue[:8] = keys[:8]
        return loss


def test_a_key_encoder_the_forward_moves_by_momentum_is_put_back_after_a_skipped_step(sidecar):
    want, _ = queue_run(sidecar, guarded=False, step_buffers=False, model=MomentumKeys(), trained="q")
    got, actions = queue_run(sidecar, guarded=True, step_buffers=False, model=MomentumKeys(), trained="q")
    assert actions[NAN_STEP] == Action.SKIP, actions
    assert all(torch.equal(a, b) for a, b in zip(got.k.parameters(), want.k.parameters()))
    assert torch.equal(got.queue, want.queue)


class CountedNet(QueueNet):
    """A buffer the loop bumps before each micro-batch (an annealing schedule by iteration): the loop's
    write, between two forwards of one step, which a skip must keep."""

    def __init__(self):
        super().__init__()
        self.register_buffer("it", torch.zeros((), dtype=torch.long))


def test_a_counter_the_loop_bumps_between_micro_batches_is_no_forwards_write(sidecar):
    model = CountedNet()
    g = Guard(model, torch.optim.AdamW(model.parameters(), lr=1e-2), f"counted-{time.time_ns()}", target=sidecar.target,
              deadline=5.0, replay=False, policy={"clip_mode": "OFF"})
    for step in range(10):
        for micro in range(2):
            model.it.add_(1)
            x, _ = batch(step * 2 + micro)
            (model(x * float("nan") if step == NAN_STEP else x) / 2).backward()
        g.step(step, None)
        g.optimizer_step()
        g.optimizer.zero_grad()
    g.close()
    assert g.counters["skips"] == 1 and int(model.it) == 20
