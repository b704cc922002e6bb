"""The closure evaluations inside one ``optimizer.step()`` under Lightning's automatic optimization.

Lightning hands the optimizer a closure (training_step, zero_grad, backward) and calls
``on_before_optimizer_step`` after every evaluation of it. An optimizer whose step evaluates the
closure several times (LBFGS' line search; any optimizer that re-evaluates) therefore reaches the
callback several times per step, the later times with weights the step has already moved. As
``guard.wrap(opt)`` does in a plain loop, only the first evaluation of a step is judged; the later ones
are no steps of their own (their gradients are left alone; those of a step the guard kept out are
dropped too, or an optimizer that evaluates again would apply them), and their update is protected:
the weights and optimizer state are copied before it and an update a later evaluation made
non-finite is undone (``apply.check_update(..., closure=True)``).

The copy costs one copy of the weights and optimizer state per step, so it is made only where the
optimizer may evaluate the closure again: never for torch's own optimizers other than LBFGS (they
evaluate it once); for any other optimizer until ``SINGLE_STEPS_TO_TRUST`` applied steps in a row
evaluated the closure once (the copy's buffers are then freed), and for good from the first step that
evaluated it twice. One single-evaluation step was not enough: a backtracking optimizer evaluates again
only on the steps it rejects, and after its first step its NaN went unprotected into the weights. A GradScaler's path (``16-mixed``) runs the closure before ``optimizer.step``,
once: nothing to count there.
"""
import torch


def _known_to_evaluate_once(optimizer):
    """torch.optim's own optimizers (not a subclass defined elsewhere) call the closure once; LBFGS
    calls it again at every iteration of its step."""
    cls = type(optimizer)
    return cls.__module__.startswith("torch.optim.") and not issubclass(cls, torch.optim.LBFGS)


#: applied steps in a row that evaluated the closure once before an optimizer is taken to evaluate it once
SINGLE_STEPS_TO_TRUST = 64


class ClosureEvaluations:
    """Counts the closure evaluations of the ``optimizer.step()`` under way (from its pre-hook on)."""

    def __init__(self, optimizer):
        # steps under way: a subclass whose step calls its parent's (hooked too) nests a second one
        self.depth = 0
        self.count = 0  # on_before_optimizer_step calls inside the outermost step under way
        # whether the optimizer's steps evaluate the closure more than once: None while unknown
        self.reevaluates = False if _known_to_evaluate_once(optimizer) else None
        self._single_steps = 0  # applied steps in a row that evaluated the closure once, while unknown
        self._hook = optimizer.register_step_pre_hook(self._step_begins)

    def _step_begins(self, optimizer, args, kwargs):
        if self.depth == 0:
            self.count = 0
        self.depth += 1

    def is_later_one(self):
        """Called at each ``on_before_optimizer_step``: whether it follows another evaluation of the same
        ``optimizer.step()``. A hook outside any step (a GradScaler's path: the closure runs before
        ``scaler.step``) is always a first evaluation."""
        if self.depth == 0:
            return False
        self.count += 1
        return self.count > 1

    def protects(self):
        """Whether the update about to run (judged at its first evaluation) needs the copy for later ones."""
        return self.depth > 0 and self.reevaluates is not False

    def step_ended(self, applied):
        """At the optimizer step's post-hook: learns, from a step whose update was judged to apply, how
        often it evaluated the closure. Returns whether the copies stop being needed now (the buffers
        can go)."""
        self.depth = max(0, self.depth - 1)
        if self.depth > 0:
            return False
        count, self.count = self.count, 0
        if not applied or count == 0:
            return False
        if count > 1:
            self.reevaluates = True
            return False
        if self.reevaluates is None:
            self._single_steps += 1
            if self._single_steps >= SINGLE_STEPS_TO_TRUST:
                self.reevaluates = False
                return True
        return False

    def reset(self):
        """A step that raised never reached its post-hook: the next batch starts outside any step."""
        self.depth, self.count = 0, 0

    def remove(self):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
