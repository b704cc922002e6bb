package io.trainguard.guard;

import java.util.List;
import java.util.Optional;

/** What the engine needs to know about checkpoints: only known-good ones are rollback targets. */
public interface CheckpointCatalog {

    record RollbackTarget(String checkpointId, long step, List<String> files, long dataPosition) {
    }

    /** A checkpoint on its way to known-good: verification pending, or healthy steps still owed. */
    record PendingTarget(String checkpointId, long step, String state, long healthySteps, int healthyStepsRequired) {
        /** In words, for a HALT that found no rollback target while this one was on its way. */
        public String describe() {
            String owed = "VERIFIED".equals(state)
                    ? "verified, with " + healthySteps + " of the " + healthyStepsRequired + " healthy steps it needs"
                    : "not verified yet (" + state + ")";
            return "checkpoint " + checkpointId + " (step " + step + ") is registered but " + owed;
        }
    }

    /** The newest known-good checkpoint; cheap and lock-free: read on every step, before the run's lock. */
    Optional<RollbackTarget> newestKnownGood(String runId);

    /**
     * The newest known-good checkpoint of a step below {@code step}: the rollback target for a step
     * that is not past the newest one (a restarted trainer that went back to an older checkpoint while
     * the run's earlier process had saved later ones). Not read on every step: only then.
     */
    default Optional<RollbackTarget> newestKnownGoodBefore(String runId, long step) {
        return newestKnownGood(runId).filter(t -> t.step() < step);
    }

    /** The newest checkpoint not yet known-good (lock-free, as {@link #newestKnownGood}). */
    default Optional<PendingTarget> newestPending(String runId) {
        return Optional.empty();
    }

    /**
     * A new trainer process opened rank {@code rank} of the run (a restart): the in-memory snapshots
     * other processes held for that rank are gone with them, whether or not this one takes any.
     */
    default void trainerRestarted(String runId, int rank, String trainerInstance) {
    }

    /**
     * The trainer could not restore this checkpoint, the target of a rollback (gone or changed since
     * it was verified, unreadable): it is never a rollback target again. Written by the catalog itself.
     */
    default void unrestorable(String runId, String checkpointId, String reason) {
    }

    /** The run's policy says how many healthy steps make a verified checkpoint known-good. */
    default void configure(String runId, int knownGoodHealthySteps) {
    }

    /**
     * A step whose update was applied cleanly; counts towards promoting verified checkpoints.
     * Returns the checkpoint rows to journal with the step (no I/O here).
     */
    List<JournalRow> onHealthyStep(String runId, long step);

    /**
     * A step that was skipped or worse; checkpoints not yet promoted must not be promoted past it.
     * Returns the checkpoint rows to journal with the step (no I/O here).
     */
    List<JournalRow> onUnhealthyStep(String runId, long step);
}
