package io.trainguard.guard;

import java.util.List;
import java.util.Optional;

/** What the engine needs to know about checkpoints: only known-good ones are rollback targets. */
public interface CheckpointCatalog {

    record RollbackTarget(String checkpointId, long step, List<String> files, long dataPosition) {
    }

    Optional<RollbackTarget> newestKnownGood(String runId);

    /** The run's policy says how many healthy steps make a verified checkpoint known-good. */
    default void configure(String runId, int knownGoodHealthySteps) {
    }

    /** A step whose update was applied cleanly; counts towards promoting verified checkpoints. */
    void onHealthyStep(String runId, long step);

    /** A step that was skipped or worse; checkpoints not yet promoted must not be promoted past it. */
    void onUnhealthyStep(String runId, long step);
}
