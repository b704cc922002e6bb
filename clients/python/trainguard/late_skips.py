"""The device gate's skips, as the training thread learns of them: one step or more later.

On the device gate a non-finite step is skipped inside the fused optimizer, but ``guard.step`` had
already returned APPLY for it: the loop (or the Trainer) stepped its LR scheduler as if the update had
happened, and a framework callback's list of verdicts saw no SKIP. The training thread learns of the
skip without waiting: with one rank from the step's statistics once their copy has landed (looked at
on later steps, never waited for), with several ranks from the flags they agreed in the next step's
collective, so every rank learns it at the same step and their schedules stay equal.

Each such skip is then (1) handed to the callbacks (``take``) and (2) owed to the LR schedule: the
next scheduler step the guard controls (``guard.optimizer_step()``, ``guard.wrap(scheduler)``, the HF
Trainer's) is left out (``pay``), so the schedule counts applied updates, one step late. A GradScaler
overflow is the scaler's business and owes nothing (the schedule advances on it, as without a guard);
a fault whose replay applied its update (TRANSIENT) skipped nothing. After a rollback nothing is owed:
the restored scheduler is the checkpoint's.
"""
import collections

from .rules import is_scaler_overflow


class LateSkips:
    MAX_PENDING = 64  # gated steps whose outcome is not read yet (normally one or two)

    def __init__(self):
        self._pending = collections.deque()  # GatedSteps, in step order
        self._new = []                       # (step, "SKIP", reasons) not taken yet
        self._generation = 0
        self.owed = 0                        # scheduler steps to leave out

    def watch(self, gated_step):
        """A gated step whose outcome the host does not know yet."""
        if len(self._pending) >= self.MAX_PENDING:
            self._pending.popleft()
        self._pending.append(gated_step)

    def settle(self, generation, wait=False):
        """Reads the outcomes that are known, in step order, without waiting (``wait``: all of them,
        when the statistics have been waited for anyway: a pause, close)."""
        if generation != self._generation:  # a rollback since: its steps are void, the scheduler restored
            self._generation, self.owed = generation, 0
            self._pending = collections.deque(r for r in self._pending if r.generation == generation)
        while self._pending:
            rec = self._pending[0]
            if not rec.known():
                if rec.multi and len(self._pending) > 1:  # no step read its flags (a pause): never known
                    self._pending.popleft()
                    continue
                if not wait or rec.multi or rec.event is None:
                    break
                rec.event.synchronize()
            self._pending.popleft()
            reason = skip_reason(rec)
            if reason is not None:
                self._new.append((rec.step, "SKIP", [reason]))
                self.owed += 1

    def forget_unknown(self):
        """Drops what cannot be learned any more (several ranks: a step no collective followed)."""
        self._pending.clear()

    def take(self):
        """The late SKIPs learned since the last call: [(step, "SKIP", [reason])]."""
        new, self._new = self._new, []
        return new

    def pay(self):
        """Whether this scheduler step is left out, for a skip the schedule already advanced on."""
        if self.owed > 0:
            self.owed -= 1
            return True
        return False


def skip_reason(rec):
    """Why the device skipped the gated step ``rec`` (GatedStep), or None when its update happened (or
    only the GradScaler skipped it)."""
    if rec.update_applied:
        return None
    if rec.multi:  # what the ranks agreed
        if not rec.agreed_skip or rec.scaled:  # under a GradScaler the flags cannot tell an overflow
            return None
        return "skipped on the device on every rank (a rank saw a non-finite value, or the norms disagreed)"
    vals = rec.host.tolist()
    loss, norm, mods = vals[0], vals[1], vals[2 + rec.n_groups:]
    if rec.finite() or is_scaler_overflow(rec.scaled, loss, norm, mods):  # the device's rule: -inf masking is no skip
        return None
    return f"non-finite (loss={'absent' if rec.loss_absent else loss}, grad norm={norm}): skipped on the device"
