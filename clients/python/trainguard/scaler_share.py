"""One unscale per iteration, whoever asks for it: the guard or the loop's own clip block.

``guard.step`` unscales the gradients for the GradScaler (the norms it judges are the true ones),
keyed by the object the loop steps (the wrapper). A loop written for a plain GradScaler also calls
``scaler.unscale_(optimizer)`` before its ``clip_grad_norm_``: on the wrapper after ``guard.step`` that
raised "unscale_() has already been called", and on the inner optimizer it divided the gradients a
second time, silently. So the Guard's scaler gets an ``unscale_`` that treats the inner optimizer and
its wrapper as one: the first call unscales, any later one in the same iteration is a no-op, and
both share one per-iteration state, so ``scaler.step`` on either sees the gradients unscaled and the
inf checks recorded. ``update()`` starts a fresh state for every optimizer, as before.

``scaler.step`` on the wrapper with no ``guard.step`` since the last update (timm's ``NativeScaler``:
the loop has no moment between backward and the update) judges the step first, with the losses the
loop handed ``scaler.scale`` since the last step, summed (its micro-batches'; a disabled scaler too:
nanoGPT under bf16 calls it all the same). Left to the wrapper's own ``step()``, such a step was
judged only when the scaler found no inf: a step it skipped (an overflow, or a NaN the model made,
step after step) never reached the guard, and a run stuck on NaN lowered its scale forever without
an incident. An update the scaler skipped without calling ``step()`` is recorded as skipped.
"""
import torch

from . import apply as apply_


def share_unscale(guard):
    scaler = guard.scaler
    if scaler is None:
        return
    guards = vars(scaler).setdefault("_trainguard_guards", [])  # a GAN's two guards may share one scaler
    guards.append(guard)
    if "unscale_" in vars(scaler):
        return
    original = scaler.unscale_

    def unscale_(optimizer):
        if not scaler.is_enabled():  # GradScaler(enabled=False) (nanoGPT's under bf16 or on the CPU): a no-op
            return original(optimizer)
        twins = next(([o for o in (g.optimizer, g._wrapped) if o is not None] for g in guards
                      if optimizer is g.optimizer or optimizer is g._wrapped), None)
        if twins is None:
            return original(optimizer)
        states = scaler._per_optimizer_states
        done = next((states[id(o)] for o in twins if id(o) in states and states[id(o)]["stage"].name != "READY"), None)
        if done is None:
            original(optimizer)
            done = states[id(optimizer)]
        for o in twins:
            states[id(o)] = done
        return None

    scaler.unscale_ = unscale_
    _judge_at_step(scaler, guards)


def release(guard):
    """At ``close()``: the scaler no longer shares this guard's unscale or judges its steps (a
    Trainer's next ``train()`` builds a new Guard on the same scaler)."""
    guards = vars(guard.scaler).get("_trainguard_guards", []) if guard.scaler is not None else []
    if guard in guards:
        guards.remove(guard)


def _judge_at_step(scaler, guards):
    original_scale, original_step = scaler.scale, scaler.step
    losses = vars(scaler).setdefault("_trainguard_losses", [])

    def scale(outputs):
        if len(guards) == 1 and torch.is_tensor(outputs) and outputs.numel() == 1:
            losses.append(outputs.detach().reshape(()))  # the micro-batches' losses since the last step (accumulation)
        return original_scale(outputs)

    def step(optimizer, *args, **kwargs):
        parts = losses[:]
        losses.clear()
        g = next((g for g in guards if optimizer is g._wrapped), None)
        if g is None:
            return original_step(optimizer, *args, **kwargs)
        if not g._pending_update:  # no guard.step since the last update: judged here, before the scaler decides
            loss = sum(parts[1:], parts[0]) if parts else None
            g.step(g.numbering.loop_step(g.next_step()), loss)
        result = original_step(optimizer, *args, **kwargs)
        if g._pending_update:  # the scaler found an inf and never called the wrapper's step()
            g._pending_update = False
            apply_.skipped_update(g, g.last_verdict)
        return result

    scaler.scale, scaler.step = scale, step
