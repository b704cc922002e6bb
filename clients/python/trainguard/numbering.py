"""The loop's step numbers onto the guard's, after a rollback the loop did not jump back for.

After a ROLLBACK the sidecar expects the run to go on from ``verdict.resume_step``. The Lightning and
HF callbacks renumber their steps so; a plain loop (``for step, batch in enumerate(loader)``) often
keeps counting. Were its numbers passed on, the sidecar would answer every later step with the
pending ROLLBACK, the guard would restore the snapshot at every step, and no update would ever be
applied again. So such a loop is renumbered from ``resume_step``, with one warning.

A loop that numbers its steps per epoch (``guard.step(batch_idx, loss)``) starts again at 0 with no
rollback behind it. Passed on, the sidecar would file a second step 0, 1, ... after the first epoch's:
a checkpoint would wait for healthy steps past its own number that come only an epoch later, the
validation spacing would count backwards, and the history would overlay the epochs. So a step that is
not past the last one, with no rollback behind it, is numbered on from the last one, with one warning.
"""
import logging

log = logging.getLogger("trainguard")


class LoopNumbering:
    def __init__(self):
        self.shift = 0         # the loop's step number minus the guard's
        self._rolled = None    # (guard step of the ROLLBACK, its resume_step) until the next step()
        self._warned_restart = False

    def rolled_back(self, step, resume_step):
        """``step``: the guard's number of the step in which the ROLLBACK was applied (on the device
        gate one after the step it was for); ``resume_step``: the guard's number to go on from (the
        verdict says it in the loop's numbering: ``loop_step(resume_step)``)."""
        self._rolled = (step, resume_step)

    def guard_step(self, step, last=None):
        """The guard's number for the loop's ``step``; ``last``: the guard's number of the last step."""
        r, self._rolled = self._rolled, None
        if r is None and last is not None and step - self.shift <= last:
            self._restarted(step, last)
        if r is not None and step > r[0] + self.shift and step != r[1] + self.shift:
            # past the step in which the ROLLBACK was applied, in the loop's numbering (the next one,
            # or further on: a loop numbering its micro-batches, a verdict that came a step late): the
            # loop did not jump back (one that did goes on from resume_step, at most past a few
            # guard.is_bad_batch positions, never beyond the step it rolled back in)
            self.shift = step - r[1]
            log.warning("trainguard: the loop went on at step %d after the rollback instead of "
                        "verdict.resume_step %d: the guard numbers its steps from %d on (loop step - %d)",
                        step, r[1], r[1], self.shift)
        return step - self.shift

    def _restarted(self, step, last):
        """The loop's ``step`` is not past the guard's ``last`` and no rollback sent it back: numbered on."""
        shift = step - (last + 1)
        (log.debug if self._warned_restart else log.warning)(
            "trainguard: step %d came after step %d with no rollback behind it (a loop numbering its steps per "
            "epoch, e.g. by batch_idx, or a counter that advances only on applied steps, `if v.should_step: "
            "step += 1`?): the guard numbers it %d and goes on from there (loop step + %d). Pass a step that "
            "keeps increasing at every guard.step() (epoch * len(loader) + batch_idx) to keep the loop's own numbers",
            step, last + self.shift, last + 1, -shift)
        self._warned_restart = True
        self.shift = shift

    def to_guard(self, step):
        """The guard's number for the loop's ``step`` where no step is being taken (a checkpoint the
        loop saves under its own number)."""
        return step - self.shift

    def loop_step(self, guard_step):
        """The loop's number for the guard's ``guard_step``."""
        return guard_step + self.shift
