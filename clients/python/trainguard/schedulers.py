"""The LR scheduler a loop built on the guarded optimizer without handing it to the guard.

The quickstart builds the scheduler on ``guard.wrap(optimizer)``; many loops never pass it to
``Guard(scheduler=...)``. A rollback must still restore its state and cut its base rates (a
``LambdaLR`` recomputes ``lr = base_lr * lambda(epoch)`` at every ``step()``, so a cut of the groups'
``lr`` alone would be undone at the next one). Every torch scheduler writes ``initial_lr`` into the
optimizer's groups; only then is the heap searched, once, for the scheduler objects that hold the
optimizer (``gc.get_referrers``: a one-off cost of a few ms per million live objects).
"""
import gc

import torch

_BASE = getattr(torch.optim.lr_scheduler, "LRScheduler", None) or torch.optim.lr_scheduler._LRScheduler


def built_on(*optimizers):
    """The outermost scheduler built on one of ``optimizers`` (a SequentialLR rather than the
    schedulers it sequences), or None."""
    if not any("initial_lr" in g for o in optimizers for g in o.param_groups):
        return None
    found = [s for s in _holders(optimizers) if isinstance(s, _BASE) and any(s.optimizer is o for o in optimizers)]
    inner = {id(c) for s in found for c in getattr(s, "_schedulers", ())}
    outer = [s for s in found if id(s) not in inner]
    return outer[0] if len(outer) == 1 else None  # several unrelated ones: which is the loop's is unknown


def _holders(optimizers):
    """Objects that reference one of ``optimizers`` directly or through their instance dict."""
    out = []
    for ref in gc.get_referrers(*optimizers):
        if isinstance(ref, dict):  # an instance's __dict__: its owner refers to that dict
            out.extend(o for o in gc.get_referrers(ref) if getattr(o, "__dict__", None) is ref)
        else:  # Python >= 3.11 keeps an instance's attributes inline, without a dict
            out.append(ref)
    return out


def each(scheduler):
    """``scheduler`` and the schedulers it sequences or chains (SequentialLR, ChainedScheduler)."""
    if scheduler is None:
        return []
    return [scheduler] + [s for c in getattr(scheduler, "_schedulers", ()) for s in each(c)]
