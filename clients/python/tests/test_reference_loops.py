"""Loops written as well-known reference code writes them (sweep 11), against the real sidecar jar:
SAM's closure form, a timm-style scheduler handed to ``guard.wrap``, one model trained by two
optimizers as docs/client.md says to guard it."""
import time

import pytest
import torch
from torch import nn

from trainguard import Action
from trainguard.guard import Guard
from models import MLP, batch, weights_finite


class SAM(torch.optim.Optimizer):
    """davda54/sam: ``step(closure)`` moves the weights up the loop's gradient, evaluates the closure
    there, puts the weights back and lets the base optimizer apply the gradient of the moved point."""

    def __init__(self, params, base_optimizer, rho=0.05, **kwargs):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for grp in self.param_groups for p in grp["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([g.norm(p=2) for g in grads]), p=2)
        for grp in self.param_groups:
            for p in grp["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * (grp["rho"] / (norm + 1e-12)))
        self.zero_grad()
        torch.enable_grad()(closure)()
        for grp in self.param_groups:
            for p in grp["params"]:
                if p.grad is not None:
                    p.data = self.state[p]["old_p"]
        self.base_optimizer.step()


def sam_run(sidecar, guarded, nan_step=None, steps=10, make_model=MLP):
    torch.manual_seed(0)
    model = make_model()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9)
    g = Guard(model, opt, f"sam-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False) \
        if guarded else None
    wopt = g.wrap(opt) if g else opt
    for step in range(steps):
        x, y = batch(step)

        def closure():
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        loss = nn.functional.mse_loss(model(x), y)
        if step == nan_step:
            loss = loss * float("nan")
        loss.backward()  # the loop's own first gradient, as SAM's README writes it
        wopt.step(closure)
        wopt.zero_grad()
        assert weights_finite(model), step
    if g:
        g.close()
    return model, g


def test_sams_closure_form_through_the_wrapper_trains_as_the_unguarded_sam(sidecar):
    # Prevents: the wrapper evaluating the closure before SAM's step (at the unmoved weights, on top of
    # the loop's gradient) and handing SAM that result for its own call at the moved weights: SAM
    # found no gradient there, never moved the weights back, and the healthy run climbed uphill
    want, _ = sam_run(sidecar, guarded=False)
    got, g = sam_run(sidecar, guarded=True)
    assert all(torch.equal(a, b) for a, b in zip(got.parameters(), want.parameters()))
    assert g.counters["skips"] == 0


def test_a_nan_in_the_loops_own_gradient_skips_sams_whole_step(sidecar):
    _, g = sam_run(sidecar, guarded=True, nan_step=4)
    assert g.counters["skips"] == 1


class StepUpdateScheduler:
    """timm's scheduler shape: ``step_update(num_updates)`` writes each group's ``lr`` from base values
    of its own (a warm-up, then constant), ``step(epoch)`` per epoch; not a torch LRScheduler."""

    def __init__(self, optimizer, warmup=4):
        self.optimizer, self.warmup = optimizer, warmup
        self.base_values = [grp["lr"] for grp in optimizer.param_groups]

    def step_update(self, num_updates):
        for grp, base in zip(self.optimizer.param_groups, self.base_values):
            grp["lr"] = base * min(1.0, (num_updates + 1) / self.warmup)

    def step(self, epoch):
        pass

    def state_dict(self):
        return {"base_values": list(self.base_values)}

    def load_state_dict(self, state):
        self.base_values = list(state["base_values"])


@pytest.mark.torch2  # Optimizer.register_step_pre_hook
def test_a_timm_style_scheduler_handed_to_wrap_keeps_a_rollbacks_lr_cut(sidecar):
    # Prevents: the cut written into the groups' lr (as for a torch scheduler, whose base rates are cut
    # too), which the next step_update() rewrote from its own base values: the run went on at full rate
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = Guard(model, opt, f"timm-cut-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
              policy={"known_good_healthy_steps": 3, "rollback_rewarm_steps": 0, "max_consecutive_skips": 2})
    wopt, used, written = g.wrap(opt), {}, {}
    sched = g.wrap(StepUpdateScheduler(wopt))
    opt.register_step_pre_hook(lambda o, args, kwargs: used.__setitem__(step, o.param_groups[0]["lr"]))
    for step in range(30):
        x, y = batch(step)
        if 12 <= step < 16:
            y = torch.full_like(y, float("nan"))
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        written[step] = opt.param_groups[0]["lr"]
        g.step(step, loss)
        wopt.step()
        wopt.zero_grad()
        sched.step_update(num_updates=step)
    g.close()
    assert g.counters["rollbacks"] == 1 and g.lr_scale == 0.5
    after = [s for s in used if s > 16]
    assert after and all(used[s] == pytest.approx(written[s] * 0.5) for s in after), (used, written)
    assert all(used[s] == written[s] for s in used if s < 12)


class Recommender(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(40, 8, sparse=True)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, u, i):
        return self.mlp(torch.cat([self.emb(u), self.emb(i)], -1)).squeeze(-1)


def two_optimizer_run(sidecar, guarded, burst=()):
    model = Recommender()
    dense = torch.optim.Adam(model.mlp.parameters(), lr=1e-2)
    sparse = torch.optim.SparseAdam(list(model.emb.parameters()), lr=1e-2)
    g = Guard(model, dense, f"two-opt-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
              policy={"known_good_healthy_steps": 3, "max_consecutive_skips": 2}) if guarded else None
    dense_step = g.wrap(dense) if g else dense
    actions = []
    for step in range(40):
        gen = torch.Generator().manual_seed(step)
        u, i = torch.randint(0, 40, (32,), generator=gen), torch.randint(0, 40, (32,), generator=gen)
        y = torch.randn(32, generator=gen)
        if step in burst:
            y[0] = float("nan")
        loss = (model(u, i) - y).pow(2).mean()
        dense_step.zero_grad()
        sparse.zero_grad()
        loss.backward()
        if g:
            actions.append(g.step(step, loss).action)
        dense_step.step()
        sparse.step()  # the other optimizer, stepped as the loop does: a vetoed step left it no gradient
        assert weights_finite(model), step
    if g:
        g.close()
    return model, actions


def test_one_guard_on_the_main_optimizer_guards_a_model_two_optimizers_train(sidecar, caplog):
    # Prevents: the docs' recipe read as two Guards, whose minor one (snapshots=False) halted the run at
    # the first burst for want of a target, while the warning about the other optimizer's parameters
    # told to build a Guard for them
    want, _ = two_optimizer_run(sidecar, guarded=False)
    got, actions = two_optimizer_run(sidecar, guarded=True)
    assert all(torch.equal(a, b) for a, b in zip(got.parameters(), want.parameters()))
    _, actions = two_optimizer_run(sidecar, guarded=True, burst=range(20, 24))
    assert Action.ROLLBACK in actions and Action.HALT not in actions, actions
    assert all(a == Action.APPLY for a in actions[-10:]), actions
    said = [r.getMessage() for r in caplog.records if "not in the optimizer this Guard was built with" in r.getMessage()]
    assert said and "two optimizers" in said[0], said


class LitEma(nn.Module):
    """latent diffusion's ldm/modules/ema.py, condensed: shadow weights in buffers, updated by calling
    the module with the model after each update; ``store``/``copy_to``/``restore`` around validation."""

    def __init__(self, model, decay=0.9):
        super().__init__()
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.int))
        self.names = {n: n.replace(".", "") for n, _ in model.named_parameters()}
        for n, p in model.named_parameters():
            self.register_buffer(self.names[n], p.detach().clone())
        self.decay, self.collected_params = decay, []

    def forward(self, model):
        self.num_updates += 1
        with torch.no_grad():
            shadow = dict(self.named_buffers())
            for n, p in model.named_parameters():
                shadow[self.names[n]].sub_((1 - self.decay) * (shadow[self.names[n]] - p))

    def store(self, parameters):
        self.collected_params = [p.clone() for p in parameters]

    def copy_to(self, model):
        shadow = dict(self.named_buffers())
        for n, p in model.named_parameters():
            p.data.copy_(shadow[self.names[n]])

    def restore(self, parameters):
        for c, p in zip(self.collected_params, parameters):
            p.data.copy_(c)


class Denoiser(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP()
        self.ema = LitEma(self.net)

    def forward(self, x):
        return self.net(x)


def test_an_ema_module_inside_the_model_keeps_its_updates_and_validates_through_its_ema_scope(sidecar):
    # Prevents: the EMA module's call after each update taken for a forward's write (its update undone at
    # the next skipped step, one update behind for good), and its store()/restore() around validation
    # filed as a VALIDATION_MUTATION ERROR ("module wiring changed") at every validation
    model = Denoiser()
    opt = torch.optim.AdamW(model.net.parameters(), lr=1e-2)
    g = Guard(model, opt, f"litema-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False,
              policy={"validation_warmup_steps": 0})
    after_update_7 = None
    for step in range(12):
        x, y = batch(step)
        loss = nn.functional.mse_loss(model(x * float("nan") if step == 8 else x), y)
        loss.backward()
        g.step(step, loss)
        if step == 8:  # the skipped step was settled: the EMA's update after step 7 is still in it
            assert torch.equal(model.ema.inpweight, after_update_7) and int(model.ema.num_updates) == 8
        g.optimizer_step()
        opt.zero_grad()
        model.ema(model.net)  # latent diffusion's on_train_batch_end
        if step == 7:
            after_update_7 = model.ema.inpweight.clone()
        if step == 5:
            with g.validation(model, step=step) as v:
                assert v.allowed
                model.ema.store(model.net.parameters())
                model.ema.copy_to(model.net)
                model(batch(99)[0])
                model.ema.restore(model.net.parameters())
    g.close()
    assert g.counters["skips"] == 1 and g.counters["validation_incidents"] == 0
    assert not [i for i in sidecar.run_info(g.run)["incidents"] if i["kind"] == "VALIDATION_MUTATION"]


class WithClsToken(nn.Module):
    """A ViT-style token the mean-pool head never uses: the optimizer's first parameter gets no gradient."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.cls_token = nn.Parameter(torch.zeros(1, 16))
        self.mlp = MLP()

    def forward(self, x):
        return self.mlp(x)


def test_sams_closure_form_is_told_by_any_gradient_the_loop_made(sidecar):
    # Prevents: the loop's backward read from the first parameter's gradient alone, which a never-used
    # cls token leaves None: the closure was evaluated first again, and SAM trained uphill
    runs = [sam_run(sidecar, guarded, steps=6, make_model=WithClsToken)[0] for guarded in (False, True)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].parameters(), runs[1].parameters()))


def test_an_lbfgs_loop_that_zeroes_in_place_before_the_step_still_has_its_closure_judged(sidecar):
    # Prevents: model.zero_grad(set_to_none=False) before opt.step(closure) taken for the loop's own
    # backward: all-zero gradients judged, LBFGS's own evaluations never, a 1e6x loss spike let through
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=3)
    g = Guard(model, opt, f"lbfgs-zero-{time.time_ns()}", target=sidecar.target, deadline=5.0, replay=False)
    wopt = g.wrap(opt)
    for step in range(12):
        x, y = batch(step)

        def closure():
            wopt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y) * (1e6 if step == 9 else 1.0)
            loss.backward()
            return loss
        model.zero_grad(set_to_none=False)
        wopt.step(closure)
        assert g.last_verdict.step == step, (step, g.last_verdict)
        if step == 9:
            assert not g.last_verdict.should_step, g.last_verdict
    g.close()
