"""Detection on code shaped like other people's (issue 15), against the real sidecar jar.

Reused modules (one Dropout before and after an RNN), a validation that swaps attention processors,
flags, scales and callables or sends the weights through fp16 and back, the validation gate said in
words without a trace hook, explosions in the first steps, and zero false positives on two real
training loops (an LSTM language model and a small CNN) with the sidecar's default policy."""
import logging
import sys

import pytest
import torch
from torch import nn

from trainguard import Action
from trainguard.guard import Guard
from trainguard.stats import first_non_finite
from models import batch, make, train, weights_finite

FAST = {"known_good_healthy_steps": 5, "validation_warmup_steps": 5, "validation_interval_steps": 5}


def kinds(sc, run):
    return [(i["kind"], i["step"]) for i in sc.run_info(run)["incidents"]]


# ---------------------------------------------------------------- models of the kind found elsewhere

class TinyLM(nn.Module):
    """pytorch/examples word_language_model's shape: one Dropout instance used before and after the RNN."""

    def __init__(self, vocab=48, d=32, layers=2):
        super().__init__()
        self.encoder = nn.Embedding(vocab, d)
        self.drop = nn.Dropout(0.2)
        self.rnn = nn.LSTM(d, d, layers, batch_first=True)
        self.decoder = nn.Linear(d, vocab)

    def forward(self, x):
        h, _ = self.rnn(self.drop(self.encoder(x)))
        return self.decoder(self.drop(h))


def lm_batch(step, vocab=48, n=16, t=24):
    """A seeded order-1 Markov source: learnable, so the loss falls fast in the first steps."""
    g = torch.Generator().manual_seed(step)
    trans = torch.Generator().manual_seed(12345)
    table = torch.randint(0, vocab, (vocab, 3), generator=trans)
    seq = torch.empty(n, t + 1, dtype=torch.long)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for i in range(t):
        pick = torch.randint(0, 3, (n,), generator=g)
        seq[:, i + 1] = table[seq[:, i], pick]
    return seq[:, :-1], seq[:, 1:]


class SmallCNN(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(16 * 4 * 4, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def image_batch(step, n=32):
    """16x16 images whose class is the bright quadrant, plus noise."""
    g = torch.Generator().manual_seed(1000 + step)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.5 * torch.randn(n, 1, 16, 16, generator=g)
    for i, c in enumerate(y.tolist()):
        r, col = divmod(c, 2)
        x[i, 0, r * 8:(r + 1) * 8, col * 8:(col + 1) * 8] += 1.0
    return x, y


# ---------------------------------------------------------------- 1. reused modules

def test_first_non_finite_call_names_reused_module_by_call():
    # Prevents: naming a reused module by its first call when a later call is where NaN appeared.
    assert first_non_finite(["drop", "rnn", "drop"], [True, False, False]) == "'rnn'"
    assert first_non_finite(["drop", "rnn", "drop"], [True, True, False]) == "'drop' (call 2 of 2 this step)"
    assert first_non_finite(["a"], [True]) == ""


def test_reused_dropout_nan_from_rnn_is_blamed_on_rnn(sidecar):
    # Prevents: issue 15's RNN LM, where every NaN was attributed to `drop` (recorded once, at its first
    # call, before the RNN) while the RNN produced it.
    torch.manual_seed(0)
    model = TinyLM()
    poison = {"on": False}

    def nan_out(module, inputs, output):  # registered before the guard's hooks: the watch sees the NaN
        if poison["on"]:
            h, state = output
            return h * float("nan"), state
        return output
    model.rnn.register_forward_hook(nan_out)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = Guard(model, opt, "reused-dropout", target=sidecar.target, deadline=5.0, mode="sync", policy=FAST)
    assert g.watch.names == ["encoder", "drop", "rnn", "decoder"]
    verdicts = {}
    for step in range(12):
        poison["on"] = step == 8
        x, y = lm_batch(step)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        verdicts[step] = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        assert weights_finite(model)
    g.close()
    v = verdicts[8]
    assert v.action == Action.SKIP
    assert v.first_nonfinite_module == "rnn", (v.first_nonfinite_module, v.reasons)
    assert ("NON_FINITE_MODULE", 8) in kinds(sidecar, "reused-dropout")
    assert all(verdicts[s].action == Action.APPLY for s in verdicts if s != 8)


# ---------------------------------------------------------------- 2. the validation audit

class Processor:
    """A diffusers-style attention processor: a plain callable object, not a Module."""

    def __init__(self, scale=1.0):
        self.scale = scale

    def __call__(self, attn, x):
        q, k, v = attn.q(x), attn.k(x), attn.v(x)
        w = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)
        return (w @ v) * self.scale


class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.scale = d ** -0.5
        self.processor = Processor()
        self.act = torch.tanh
        self.fused = False

    def set_processor(self, p):
        self.processor = p

    def forward(self, x):
        return self.act(self.processor(self, x))


class TinyDiffuser(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.blocks = nn.ModuleList([Attention(d) for _ in range(2)])
        self.out = nn.Linear(d, d)
        self.use_cache = False

    def set_attn_processor(self, p):  # diffusers' set_attn_processor walks the tree the same way
        for m in self.modules():
            if isinstance(m, Attention):
                m.set_processor(p)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return self.out(x)


def diffuser_loop(sidecar, run, steps=6):
    torch.manual_seed(0)
    model = TinyDiffuser()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = Guard(model, opt, run, target=sidecar.target, deadline=5.0, policy=FAST)
    for step in range(steps):
        x = torch.randn(8, 4, 16, generator=torch.Generator().manual_seed(step))
        loss = (model(x) - x).pow(2).mean()
        loss.backward()
        g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    g.flush()
    return model, g


def test_validation_attention_processor_swap_flags_and_callables_named_and_restored(sidecar):
    # Prevents: issue 15's diffusion validation, which swapped attention processors, a scale, a flag
    # and a callable: the audit saw nothing and training went on with a changed model.
    model, g = diffuser_loop(sidecar, "val-attrs")
    probe = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        before = model(probe)
    with g.validation(model, step=5) as v:
        assert v.allowed, v.reason
        model.set_attn_processor(Processor(scale=0.5))   # a swap
        model.blocks[1].scale = 1.0                       # module.scale = ...
        model.use_cache = True                            # a flag
        model.blocks[0].act = torch.relu                  # a replaced callable
        model.blocks[0].cache = {"k": 1}                  # an added attribute
    details = v.audit["details"]
    text = "\n".join(details)
    assert v.audit["wiring_changed"] and v.restored, details
    assert "blocks.0.processor replaced by another Processor" in text and "blocks.1.processor replaced" in text
    assert "blocks.1.scale 0.25 -> 1.0" in text
    assert "<root>.use_cache False -> True" in text
    assert "blocks.0.act replaced (tanh -> relu)" in text
    assert "blocks.0.cache added" in text
    assert not model.use_cache and model.blocks[0].act is torch.tanh and "cache" not in model.blocks[0].__dict__
    with torch.no_grad():
        assert torch.equal(model(probe), before)
    g.close()
    assert ("VALIDATION_MUTATION", 5) in kinds(sidecar, "val-attrs")


def test_validation_in_place_change_of_a_processor_is_seen_and_undone(sidecar):
    # Prevents: a mutation inside a plain object (processor.scale = ...) passing because the object
    # identity did not change.
    model, g = diffuser_loop(sidecar, "val-inplace")
    proc = model.blocks[0].processor
    with g.validation(model, step=5) as v:
        if v.allowed:
            proc.scale = 3.0
    assert "blocks.0.processor.scale 1.0 -> 3.0" in v.audit["details"], v.audit["details"]
    assert proc.scale == 1.0 and model.blocks[0].processor is proc
    g.close()


def test_validation_precision_round_trip_is_named_once(sidecar):
    # Prevents: 32 "values changed" lines where one mechanism explains them (model.half(); model.float()).
    model, g = diffuser_loop(sidecar, "val-fp16")
    saved = {k: t.clone() for k, t in model.state_dict().items()}
    with g.validation(model, step=5) as v:
        if v.allowed:
            model.half()
            model.float()
    values = [d for d in v.audit["details"] if "float16 and back" in d]
    assert len(values) == 1 and values[0].startswith("every parameter and buffer went through float16"), v.audit
    assert v.audit["parameters_changed"] and v.restored
    assert all(torch.equal(saved[k], t) for k, t in model.state_dict().items())
    g.close()


def test_validation_without_changes_reports_nothing(sidecar):
    # Prevents: false audit findings from attributes torch itself keeps (LSTM flat weights, hooks).
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = Guard(model, opt, "val-clean", target=sidecar.target, deadline=5.0, policy=FAST)
    for step in range(6):
        x, y = lm_batch(step)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
    with g.validation(model, step=5) as v:
        if v.allowed:
            model.eval()
            with torch.no_grad():
                model(lm_batch(99)[0])
            model.train()
    assert v.allowed and v.audit["details"] == [] and not v.restored
    g.close()


# ---------------------------------------------------------------- 3. the gate says what it does

def test_deferred_validation_is_said_once_with_its_step_and_uses_no_trace_hook(sidecar, caplog):
    # Prevents: a silent skip of the validation body through sys.settrace (breaks debuggers, coverage).
    model, opt = make()
    g = Guard(model, opt, "val-deferred", target=sidecar.target, deadline=5.0, policy=FAST)
    train(g, model, opt, 2)
    g.flush()
    trace = sys.gettrace()
    ran = []
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        for step in (1, 2, 3):
            with g.validation(model, step=step) as v:
                assert sys.gettrace() is trace
                if v.allowed:
                    ran.append(step)
            assert not v.allowed and v.deferred_until == 5, v.reason
    deferrals = [r for r in caplog.records if "deferred" in r.getMessage()]
    assert ran == [] and len(deferrals) == 1, [r.getMessage() for r in caplog.records]
    assert "until step 5" in deferrals[0].getMessage() and "if v.allowed" in deferrals[0].getMessage()
    g.close()


def test_old_form_without_allowed_check_is_warned_loudly_and_still_audited(sidecar, caplog):
    # Prevents: a loop written for the old trace-hook skip running a refused validation unannounced,
    # and that validation changing the model unseen.
    model, opt = make()
    g = Guard(model, opt, "val-oldform", target=sidecar.target, deadline=5.0, policy=FAST)
    train(g, model, opt, 2)
    g.flush()
    with caplog.at_level(logging.WARNING, logger="trainguard"):
        for _ in range(2):
            with g.validation(model, step=1) as v:
                model.eval()
                model.blocks[0].forward = lambda x: x * 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "v.allowed" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    assert v.restored and "forward" not in model.blocks[0].__dict__ and model.training
    g.close()


# ---------------------------------------------------------------- 4. early explosions, no false positives

def test_early_loss_explosion_is_skipped_before_the_spike_warmup(sidecar):
    # Prevents: issue 15's first 17 steps, losses of 1e3..1e12 applied because no bound existed
    # before 64 samples.
    model, opt = make()
    g = Guard(model, opt, "early-explosion", target=sidecar.target, deadline=5.0, mode="sync")

    def explode(step, x, y, model):
        return (x * 1e3, y * 1e3) if step in (6, 7) else (x, y)
    vs = {v.step: v for v in train(g, model, opt, 12, inject=explode)}
    g.close()
    assert vs[6].action == Action.SKIP and vs[7].action == Action.SKIP, (vs[6].reasons, vs[7].reasons)
    assert "before the 64-sample warm-up" in " ".join(vs[6].reasons), vs[6].reasons
    assert all(vs[s].should_step for s in vs if s not in (6, 7))
    assert ("LOSS_SPIKE", 6) in kinds(sidecar, "early-explosion")


def run_healthy(sidecar, run, model, opt, steps, make_batch, loss_fn):
    g = Guard(model, opt, run, target=sidecar.target, deadline=5.0, mode="sync")
    actions = {}
    for step in range(steps):
        x, y = make_batch(step)
        loss = loss_fn(model(x), y)
        loss.backward()
        v = g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad(set_to_none=True)
        actions[step] = (v.action, loss.item(), v.reasons)
    g.close()
    flagged = {s: a for s, a in actions.items() if a[0] not in (Action.APPLY, Action.CLIP)}
    incidents = [k for k in kinds(sidecar, run) if k[0] in ("LOSS_SPIKE", "GRAD_SPIKE", "NON_FINITE_LOSS")]
    return flagged, incidents, actions


def test_lstm_language_model_default_policy_no_false_positives(sidecar):
    # Prevents: robust early statistics flagging healthy early training (the loss of an LM falls
    # from ln(48) fast; the grad norm moves a lot in the first steps).
    torch.manual_seed(1)
    model = TinyLM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    flagged, incidents, actions = run_healthy(
        sidecar, "healthy-lstm", model, opt, 300, lm_batch,
        lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()))
    assert flagged == {} and incidents == [], (flagged, incidents)
    assert actions[299][1] < 0.8 * actions[0][1]  # it learned: this is a real loop, not a flat signal


def test_small_cnn_default_policy_no_false_positives(sidecar):
    # Prevents: a run that learns its task perfectly (loss 0, grad norms of 1e-14 round-off) being
    # skipped at every step, its round-off judged as explosions against a median of 1e-16.
    torch.manual_seed(2)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    flagged, incidents, actions = run_healthy(sidecar, "healthy-cnn", model, opt, 300, image_batch,
                                              nn.functional.cross_entropy)
    assert flagged == {} and incidents == [], (flagged, incidents)
    assert actions[299][1] < 0.5 * actions[0][1]
