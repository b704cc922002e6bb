"""trainguard.lightning against the real sidecar jar: a tiny LightningModule on the CPU with an
injected NaN, a loss spike, a validation pass that damages the model, and a burst of NaNs that ends
in a rollback to a checkpoint Lightning's own ModelCheckpoint wrote. Weights are checked finite
after every batch. Skipped where Lightning is not installed (the Debian stack)."""
import os
import time

import pytest
import torch

import lightning.pytorch as pl

from models import MLP, batch, weights_finite  # noqa: E402

POLICY = {"known_good_healthy_steps": 3, "validation_warmup_steps": 5, "validation_interval_steps": 5,
          "spike_warmup_steps": 8}
NAN_AT, SPIKE_AT, BURST = {12}, 20, set(range(30, 36))


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP()
        self.calls = 0
        self.harm_validation = True

    def forward(self, x):
        return self.net(x)

    def training_step(self, b, i):
        x, y = b
        if self.calls in NAN_AT or self.calls in BURST:
            y = y.clone(); y[0, 0] = float("nan")
        if self.calls == SPIKE_AT:
            y = y * 1e4
        self.calls += 1
        return torch.nn.functional.mse_loss(self(x), y)

    def validation_step(self, b, i):
        if self.harm_validation:  # a metric hook that writes into the model (the Hallo failure class)
            with torch.no_grad():
                self.net.out.bias.add_(1.0)
        x, y = b
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("val_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=100)}


class Checks(pl.Callback):
    """The test's own eyes: finite weights after every batch, the rollback's restored weights."""

    def __init__(self, tg, sidecar, run):
        self.tg, self.sidecar, self.run = tg, sidecar, run
        self.rollbacks = []

    def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
        assert weights_finite(pl_module), f"non-finite weights after batch {i}"
        last = self.tg.guard.last_verdict
        if last is not None and last.action.name == "ROLLBACK" and not any(r[0] == last.step for r in self.rollbacks):
            entry = self.tg.guard.checkpoints[last.rollback.checkpoint_step]
            saved = torch.load(entry["restore"], map_location="cpu", weights_only=False)["state_dict"]
            now = pl_module.state_dict()
            self.rollbacks.append((last.step, entry["restore"], all(torch.equal(saved[k], now[k]) for k in saved)))
        if pl_module.calls == min(BURST) - 1:  # let the sidecar verify a saved checkpoint before the burst
            end = time.monotonic() + 90
            while time.monotonic() < end:
                cps = self.sidecar.run_info(self.run).get("checkpoints", [])
                if any(c["state"] == "KNOWN_GOOD" for c in cps):
                    return
                time.sleep(0.2)
            pytest.fail(f"no checkpoint became KNOWN_GOOD: {cps}")


def test_lightning_callback_skips_audits_and_rolls_back_to_its_own_checkpoint(sidecar):
    # prevents: Lightning users getting none of the guard (NaN updates, harmful validation, no rollback)
    from trainguard.lightning import TrainguardCallback
    run = "lightning-fit"
    data = [batch(i) for i in range(60)]
    tg = TrainguardCallback(run, target=sidecar.target, deadline=5.0, policy=POLICY)
    checks = Checks(tg, sidecar, run)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=os.path.join(sidecar.checkpoint_root, "lightning"),
                                        every_n_train_steps=5, save_top_k=-1)
    trainer = pl.Trainer(max_steps=45, accelerator="cpu", devices=1, callbacks=[tg, checks, ckpt],
                         val_check_interval=10, limit_val_batches=2, num_sanity_val_steps=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False)
    model = Tiny()
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None),
                val_dataloaders=torch.utils.data.DataLoader(data[:2], batch_size=None))
    by_step = {}
    for step, action, reasons in tg.verdicts:
        by_step.setdefault(step, action)
    assert by_step.get(12) == "SKIP", tg.verdicts
    assert by_step.get(20) in ("SKIP", "CLIP"), tg.verdicts  # the spike never lands at full size
    audited = [a for s, allowed, a in tg.validations if allowed]
    assert audited and audited[0]["parameters_changed"] and audited[0]["restored"], tg.validations
    assert checks.rollbacks, f"no ROLLBACK: {tg.verdicts}"
    step, path, restored = checks.rollbacks[0]
    assert path.endswith(".ckpt") and os.path.dirname(path) == os.path.join(sidecar.checkpoint_root, "lightning")
    assert restored, "the weights after the rollback are not the checkpoint's"
    assert tg.guard.counters["rollbacks"] >= 1 and weights_finite(model)


class Loud(pl.LightningModule):
    """Every step's gradient norm far above both clips (targets x 50); plain SGD, fused: the device gate."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP()

    def forward(self, x):
        return self.net(x)

    def training_step(self, b, i):
        x, y = b
        return torch.nn.functional.mse_loss(self(x), y * 50)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3, fused=True)


@pytest.mark.torch2
def test_lightning_gradient_clipping_composes_with_the_guards_clip_on_the_device_gate(sidecar):
    # prevents: a step that both clip being divided twice. Lightning clips after
    # on_before_optimizer_step; the gate's divisor, from the unclipped norm, used to be applied
    # inside optimizer.step() on top of it.
    from trainguard.lightning import TrainguardCallback
    guard_clip, lightning_clip, steps = 0.3, 0.5, 8
    data = [batch(i) for i in range(steps)]
    tg = TrainguardCallback("lightning-clip", target=sidecar.target, deadline=5.0, device_gate=True,
                            policy={"clip_mode": "FIXED", "clip_threshold": guard_clip})
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, callbacks=[tg], logger=False,
                         gradient_clip_val=lightning_clip, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    model = Loud()
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert tg.guard.counters["device_gated_steps"] == steps
    # the same steps by hand: each gradient clipped once, to the smaller of the two thresholds
    ref = Loud()
    opt = torch.optim.SGD(ref.parameters(), lr=1e-3)
    for x, y in data:
        torch.nn.functional.mse_loss(ref(x), y * 50).backward()
        assert float(torch.nn.utils.clip_grad_norm_(ref.parameters(), min(guard_clip, lightning_clip))) > lightning_clip
        opt.step()
        opt.zero_grad()
    for got, want in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
