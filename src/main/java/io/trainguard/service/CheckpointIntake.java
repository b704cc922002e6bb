package io.trainguard.service;

import io.trainguard.checkpoint.CheckpointFileSpec;
import io.trainguard.checkpoint.CheckpointFormat;
import io.trainguard.checkpoint.CheckpointRecord;
import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.guard.GuardedRuns;
import java.util.List;

/** RegisterCheckpoint: only a run the engine knows may register one; the registry then queues its verification. */
public final class CheckpointIntake {
    private final GuardedRuns guard;
    private final CheckpointRegistry checkpoints;

    public CheckpointIntake(GuardedRuns guard, CheckpointRegistry checkpoints) {
        this.guard = guard;
        this.checkpoints = checkpoints;
    }

    public CheckpointStatus register(String runId, long step, CheckpointFormat format, List<CheckpointFileSpec> files,
                                     long dataPosition) {
        // NOT_FOUND for an unknown run, before any file is looked at. Its last step is journaled, so
        // "no step decided yet" holds across a sidecar restart (a start-state snapshot is known-good at once).
        boolean decided = guard.run(runId).lastStep() >= 0;
        CheckpointRecord record = checkpoints.register(runId, step, format, files, dataPosition, decided);
        return new CheckpointStatus(record, checkpoints.progress(record.id()));
    }
}
