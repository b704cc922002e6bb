package io.trainguard.service;

import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.guard.RunReads;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import java.util.List;

/** GetRun: the engine's view of a run (state, newest incidents) joined with the run's checkpoints. */
public final class RunOverview {
    private final RunReads reads;
    private final CheckpointRegistry checkpoints;

    public record Overview(RunSnapshot run, List<Incident> incidents, List<CheckpointStatus> checkpoints) {
    }

    public RunOverview(RunReads reads, CheckpointRegistry checkpoints) {
        this.reads = reads;
        this.checkpoints = checkpoints;
    }

    public Overview get(String runId, int incidentLimit) {
        var view = reads.view(runId, incidentLimit); // NOT_FOUND for an unknown run
        return new Overview(view.run(), view.incidents(), checkpoints(runId));
    }

    public List<CheckpointStatus> checkpoints(String runId) {
        return checkpoints.list(runId).stream().map(c -> new CheckpointStatus(c, checkpoints.progress(c.id()))).toList();
    }
}
