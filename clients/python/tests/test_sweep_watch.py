"""Regressions found by the client sweep (/tmp/scen-plain): which forwards a step is charged with,
and the BatchNorm statistics a run ends with."""
import pytest
import torch
from torch import nn

from trainguard import Action
from trainguard.guard import Guard


def gan(sidecar, run, set_to_none, nan_at, penalty_first=False):
    """A GAN's D loop (dcgan's order): D's step, then the generator pass through D whose backward
    reaches D's gradients, which D's next zero_grad discards. ``fake`` is NaN at ``nan_at``.
    ``penalty_first``: the first backward through D is a torch.autograd.grad (a WGAN-GP gradient
    penalty), which leaves no .grad. Returns D's verdicts."""
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    G = nn.Linear(2, 4)
    opt_d, opt_g = torch.optim.SGD(D.parameters(), lr=0.01), torch.optim.SGD(G.parameters(), lr=0.01)
    g = Guard(D, opt_d, run, target=sidecar.target, deadline=5.0, replay=False)
    opt_d = g.wrap(opt_d)
    verdicts = []
    if penalty_first:
        x = torch.randn(16, 4, requires_grad=True)
        torch.autograd.grad(D(x).sum(), x)
    for i in range(8):
        D.zero_grad(set_to_none=set_to_none)
        loss_d = D(torch.randn(16, 4)).pow(2).mean()
        loss_d.backward()
        verdicts.append(g.step(i, loss_d))
        opt_d.step()
        fake = G(torch.randn(16, 2))
        if i == nan_at:
            fake = fake * float("nan")
        opt_g.zero_grad()
        D(fake).mean().backward()
    g.close()
    return verdicts


@pytest.mark.parametrize("penalty_first", [False, True], ids=["backward", "autograd-grad-first"])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_forward_whose_gradients_zero_grad_discarded_is_not_charged_to_the_next_step(sidecar, set_to_none,
                                                                                      penalty_first):
    # Prevents: a GAN's generator pass through D after D's step (NaN fake at iteration 2) skipping
    # D's healthy step 3 as "non-finite values first appeared in module '0'". And the gradient to
    # watch given up for good when the first backward left none (a gradient penalty's autograd.grad).
    verdicts = gan(sidecar, f"sweep-gan-{set_to_none}-{penalty_first}", set_to_none, nan_at=2,
                   penalty_first=penalty_first)
    assert [v.action for v in verdicts] == [Action.APPLY] * 8, [v.reasons for v in verdicts]


def test_a_nan_micro_batch_is_still_charged_after_an_in_place_clip_before_the_next_micro_batch(sidecar):
    # Prevents: an in-place change of the gradients between micro-batches (clip_grad_norm_) read as a
    # zero_grad, so the NaN micro-batch's module calls are dropped and its step is not named by module.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = Guard(model, opt, "sweep-accum-clip", target=sidecar.target, deadline=5.0, replay=False)
    for i in range(3):
        opt.zero_grad(set_to_none=False)
        for micro in range(2):
            x = torch.randn(8, 4)
            if i == 2 and micro == 0:
                x[0, 0] = float("nan")
            model(x).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        v = g.step(i, None)
        g.optimizer_step()
    g.close()
    assert v.action == Action.SKIP
    assert "module '0' (its call 1 of 2" in v.reasons[0], v.reasons


class BN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.lin(x)).sum(1)


def test_close_puts_back_batchnorm_statistics_a_nan_forward_after_the_last_step_wrote(sidecar):
    # Prevents: a run that ends with NaN running_mean/running_var (a GAN's last generator pass
    # through D after D's last judged step), so the saved model evaluates to NaN for every input.
    torch.manual_seed(0)
    model = BN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = Guard(model, opt, "sweep-bn-close", target=sidecar.target, deadline=5.0, replay=False)
    for i in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        g.step(i, None)
        g.optimizer_step()
    kept = model.bn.running_mean.clone(), model.bn.running_var.clone()
    model(torch.full((8, 4), float("nan")))  # after the last step: no step judges it
    g.close()
    assert torch.equal(model.bn.running_mean, kept[0]) and torch.equal(model.bn.running_var, kept[1])
    model.eval()
    assert torch.isfinite(model(torch.randn(4, 4))).all()
