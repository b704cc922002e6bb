"""The loop's step numbers onto the guard's, after a rollback the loop did not jump back for.

After a ROLLBACK the sidecar expects the run to go on from ``verdict.resume_step``. The Lightning and
HF callbacks renumber their steps so; a plain loop (``for step, batch in enumerate(loader)``) often
keeps counting. Were its numbers passed on, the sidecar would answer every later step with the
pending ROLLBACK, the guard would restore the snapshot at every step, and no update would ever be
applied again. So such a loop is renumbered from ``resume_step``, with one warning.
"""
import logging

log = logging.getLogger("trainguard")


class LoopNumbering:
    def __init__(self):
        self.shift = 0         # the loop's step number minus the guard's
        self._rolled = None    # (guard step of the ROLLBACK, its resume_step) until the next step()

    def rolled_back(self, step, resume_step):
        """``step``: the guard's number of the step in which the ROLLBACK was applied (on the device
        gate one after the step it was for)."""
        self._rolled = (step, resume_step)

    def guard_step(self, step):
        """The guard's number for the loop's ``step``."""
        r, self._rolled = self._rolled, None
        if r is not None and step > r[0] + self.shift and step != r[1]:
            # past the step in which the ROLLBACK was applied, in the loop's numbering (the next one,
            # or further on: a loop numbering its micro-batches, a verdict that came a step late): the
            # loop did not jump back (one that did goes on from resume_step, at most past a few
            # guard.is_bad_batch positions, never beyond the step it rolled back in)
            self.shift = step - r[1]
            log.warning("trainguard: the loop went on at step %d after the rollback instead of "
                        "verdict.resume_step %d: the guard numbers its steps from %d on (loop step - %d)",
                        step, r[1], r[1], self.shift)
        return step - self.shift

    def to_guard(self, step):
        """The guard's number for the loop's ``step`` where no step is being taken (a checkpoint the
        loop saves under its own number)."""
        return step - self.shift

    def loop_step(self, guard_step):
        """The loop's number for the guard's ``guard_step``."""
        return guard_step + self.shift
