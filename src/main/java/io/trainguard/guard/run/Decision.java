package io.trainguard.guard.run;

import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.Verdict;

/**
 * What {@link RunDecider#decide} returns: a verdict and everything that follows from it, for the
 * service to apply after the run's lock: the journal write (awaited writes are durable before the
 * verdict leaves), the state change to announce, and what the step means for the run's checkpoints.
 */
public record Decision(Verdict verdict, JournalWrite write, RunState from, RunState to, CheckpointEffect checkpoints) {

    /** What a decided step does to the run's not-yet-known-good checkpoints. */
    public enum CheckpointEffect {
        /** an applied step: counts towards promoting verified checkpoints */
        HEALTHY_STEP,
        /** a skipped (or worse) step: checkpoints below it are never promoted */
        UNHEALTHY_STEP,
        /** a halted run's repeated HALT: already counted */
        NONE
    }
}
