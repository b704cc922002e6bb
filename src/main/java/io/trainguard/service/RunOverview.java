package io.trainguard.service;

import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.guard.GuardService;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import java.util.List;

/** GetRun: the engine's view of a run (state, newest incidents) joined with the run's checkpoints. */
public final class RunOverview {
    private final GuardService guard;
    private final CheckpointRegistry checkpoints;

    public record Overview(RunSnapshot run, List<Incident> incidents, List<CheckpointStatus> checkpoints) {
    }

    public RunOverview(GuardService guard, CheckpointRegistry checkpoints) {
        this.guard = guard;
        this.checkpoints = checkpoints;
    }

    public Overview get(String runId, int incidentLimit) {
        var view = guard.view(runId, incidentLimit); // NOT_FOUND for an unknown run
        return new Overview(view.run(), view.incidents(), checkpoints(runId));
    }

    public List<CheckpointStatus> checkpoints(String runId) {
        return checkpoints.list(runId).stream().map(c -> new CheckpointStatus(c, checkpoints.progress(c.id()))).toList();
    }
}
