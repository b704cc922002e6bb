"""Lightning's LR schedulers under the callback: a step the guard kept out does not advance them.

The rule of ``guard.wrap(scheduler)`` (wrap.GuardedScheduler) in a plain loop: the scheduler step
that follows a skipped update is left out (not after a GradScaler's own overflow skip, on which a
schedule advances without a guard too), and so is one scheduler step for each skip the device gate
made that the host learned of since (late_skips). Lightning steps its schedulers itself, through the
LightningModule's ``lr_scheduler_step(scheduler, metric)`` hook, right after the batch's optimizer
step and before ``on_train_batch_end``; it saves and restores ``config.scheduler`` in its checkpoints,
so that object stays the user's own, unwrapped. For a batch with something to leave out the callback
puts its own ``lr_scheduler_step`` in the module's ``__dict__`` (taken out again at the batch's end),
which leaves out the calls for step-interval schedulers (``interval="step"``, any ``frequency``: the
one Lightning makes after the skipped step, when that batch is one of the N-th) and passes every
other call on to the module's own hook: epoch-interval schedulers and ReduceLROnPlateau, which steps
on a metric, advance as without a guard.
"""
import logging

log = logging.getLogger("trainguard")


def per_step(config):
    """A scheduler Lightning steps after optimizer steps (not one stepped on a monitored metric)."""
    return config.interval == "step" and not config.reduce_on_plateau


class ScheduleHold:
    """Leaves out, for one batch, the step-interval scheduler steps that a skipped update (or a
    late-learned device skip) owes."""

    def __init__(self):
        self._module = None   # the LightningModule whose lr_scheduler_step is replaced for this batch
        self._skipped = False  # this batch's update was kept out
        self._hold = None     # decided at the batch's first step-interval scheduler call
        self._guard = self._configs = None
        self.held = 0         # scheduler steps left out so far

    def arm(self, trainer, pl_module, guard, skipped):
        """After the batch's step was judged: replaces the module's hook when this batch may owe a
        left-out scheduler step (it was skipped, or device skips learned late are owed)."""
        self.disarm()
        configs = list(getattr(trainer, "lr_scheduler_configs", None) or [])
        if not (skipped or guard.gated.late.owed) or not any(per_step(c) for c in configs):
            return
        self._guard, self._configs, self._skipped, self._hold = guard, configs, skipped, None
        own = pl_module.lr_scheduler_step  # the module's (a user's override included), bound

        def lr_scheduler_step(scheduler, metric=None):
            if self._left_out(scheduler):
                return None
            return own(scheduler, metric)

        pl_module.__dict__["lr_scheduler_step"] = lr_scheduler_step
        self._module = pl_module

    def _left_out(self, scheduler):
        config = next((c for c in self._configs if c.scheduler is scheduler), None)
        if config is None or not per_step(config):
            return False
        if self._hold is None:  # one decision per batch: each step-interval scheduler follows it
            self._hold = self._skipped or self._guard.gated.late.pay()
            if self._hold:
                self.held += 1
                log.debug("trainguard: the step-interval LR schedulers' step after a skipped update is left out")
        return self._hold

    def disarm(self):
        """At the batch's end (and when fit ends or raises): the module's own hook again."""
        if self._module is not None:
            self._module.__dict__.pop("lr_scheduler_step", None)
        self._module = self._guard = self._configs = None
