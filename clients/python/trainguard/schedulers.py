"""The LR scheduler a loop built on the guarded optimizer without handing it to the guard.

The quickstart builds the scheduler on ``guard.wrap(optimizer)``; many loops never pass it to
``Guard(scheduler=...)``. A rollback must still restore its state and cut its base rates (a
``LambdaLR`` recomputes ``lr = base_lr * lambda(epoch)`` at every ``step()``, so a cut of the groups'
``lr`` alone would be undone at the next one). Every torch scheduler writes ``initial_lr`` into the
optimizer's groups, but ReduceLROnPlateau does not: the heap is searched once, at the first step,
for the scheduler objects that hold the optimizer (``gc.get_referrers``: a one-off cost of a few ms
per million live objects). Several (a per-step schedule and a ReduceLROnPlateau on validation) are
restored and cut together (``Several``). The guard never steps a scheduler it found: the loop does.

An in-memory snapshot is taken right after an update, and the loop steps its scheduler after that:
the snapshot's scheduler state is one step short of the state the next update runs with. The step
counts are read at the take (``marks``) and again at the next ``guard.step`` (``stepped_since``); a
restore steps each scheduler that many times (``step_again``), so the run goes on at the rate the
original run had there, not one step behind from then on.
"""
import gc
import warnings

import torch

_BASE = (getattr(torch.optim.lr_scheduler, "LRScheduler", None) or torch.optim.lr_scheduler._LRScheduler,
         torch.optim.lr_scheduler.ReduceLROnPlateau)  # not an LRScheduler before torch 2.2


def built_on(*optimizers):
    """The outermost scheduler built on one of ``optimizers`` (a SequentialLR rather than the
    schedulers it sequences), ``Several`` of them, or None."""
    found = [s for s in _holders(optimizers) if isinstance(s, _BASE) and any(s.optimizer is o for o in optimizers)]
    inner = {id(c) for s in found for c in getattr(s, "_schedulers", ())}
    outer = list({id(s): s for s in found if id(s) not in inner}.values())
    if not outer:
        return None
    return outer[0] if len(outer) == 1 else Several(outer)


class Several:
    """Schedulers the loop built on one optimizer, side by side: their states restored together,
    their base rates cut together (``each`` reaches them through ``_schedulers``)."""

    def __init__(self, schedulers):
        self._schedulers = list(schedulers)

    def state_dict(self):
        return {"schedulers": [s.state_dict() for s in self._schedulers]}

    def load_state_dict(self, state):
        for s, d in zip(self._schedulers, state["schedulers"]):
            s.load_state_dict(d)


def _holders(optimizers):
    """Objects that reference one of ``optimizers`` directly or through their instance dict."""
    out = []
    for ref in gc.get_referrers(*optimizers):
        if isinstance(ref, dict):  # an instance's __dict__: its owner refers to that dict
            out.extend(o for o in gc.get_referrers(ref) if getattr(o, "__dict__", None) is ref)
        else:  # Python >= 3.11 keeps an instance's attributes inline, without a dict
            out.append(ref)
    return out


def torch_schedulers(scheduler):
    """Whether ``scheduler`` (and every one it sequences) is torch's, which recomputes the rate from
    base rates lrcut knows how to cut; a timm-style one (``step_update``, ``base_values``) is not."""
    return scheduler is not None and all(isinstance(s, _BASE) for s in each(scheduler)
                                         if not isinstance(s, Several))


def each(scheduler):
    """``scheduler`` and the schedulers it sequences or chains (SequentialLR, ChainedScheduler)."""
    if scheduler is None:
        return []
    return [scheduler] + [s for c in getattr(scheduler, "_schedulers", ()) for s in each(c)]


def _progress(scheduler):
    """(calls of ``step()``, epoch) of ``scheduler``, either None where it keeps no such count; a restore
    steps it again by the larger advance of the two since the take. torch's schedulers count their
    ``step()`` calls (``_step_count``) whatever epoch a call passes, but ``CosineAnnealingWarmRestarts``
    overrides ``step()`` and never counts: its ``last_epoch`` is the count there (a whole epoch per call
    without an argument; with fractional ones, ``sched.step(epoch + i / iters)``, it moves only at the
    epoch's end). A ChainedScheduler keeps neither and steps every member at each call: its first member's."""
    count, epoch = getattr(scheduler, "_step_count", None), getattr(scheduler, "last_epoch", None)
    count, epoch = (v if isinstance(v, int) and not isinstance(v, bool) else None for v in (count, epoch))
    if count is None and epoch is None:
        members = getattr(scheduler, "_schedulers", None)
        return _progress(members[0]) if members else (None, None)
    return count, epoch


def _stepped_by_the_loop(scheduler):
    """The schedulers the loop steps between updates: the outermost ones (``Several``'s members), not
    a ReduceLROnPlateau (it steps on a metric, which a restore does not have)."""
    members = scheduler._schedulers if isinstance(scheduler, Several) else [scheduler] if scheduler is not None else []
    return [s for s in members if _progress(s) != (None, None)
            and not isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau)]


def marks(scheduler):
    """(scheduler, its progress) at a snapshot's take."""
    return [(s, _progress(s)) for s in _stepped_by_the_loop(scheduler)]


def stepped_since(taken):
    """(scheduler, how often it was stepped since ``marks``) at the next ``guard.step``."""
    out = []
    for s, then in taken:
        now = _progress(s)
        out.append((s, max([b - a for a, b in zip(then, now) if a is not None and b is not None] or [0])))
    return out


def step_again(stepped):
    """After a restore: steps each scheduler as often as the loop did after the snapshot's update."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": as the loop did
        for s, n in stepped:
            for _ in range(max(0, n)):
                s.step()
