"""One unscale per iteration, whoever asks for it: the guard or the loop's own clip block.

``guard.step`` unscales the gradients for the GradScaler (the norms it judges are the true ones),
keyed by the object the loop steps (the wrapper). A loop written for a plain GradScaler also calls
``scaler.unscale_(optimizer)`` before its ``clip_grad_norm_``: on the wrapper after ``guard.step`` that
raised "unscale_() has already been called", and on the inner optimizer it divided the gradients a
second time, silently. So the Guard's scaler gets an ``unscale_`` that treats the inner optimizer and
its wrapper as one: the first call unscales, any later one in the same iteration is a no-op, and
both share one per-iteration state, so ``scaler.step`` on either sees the gradients unscaled and the
inf checks recorded. ``update()`` starts a fresh state for every optimizer, as before.
"""


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
