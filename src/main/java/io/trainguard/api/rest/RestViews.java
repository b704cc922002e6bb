package io.trainguard.api.rest;

import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.report.RootCauseAnalyzer;
import io.trainguard.report.RootCauseReport;
import io.trainguard.store.StepHistory;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.RunReads;
import jakarta.enterprise.context.ApplicationScoped;
import java.util.List;

/** The read views the JSON API serves, shared with the HTML pages so both show the same thing. */
@ApplicationScoped
public class RestViews {
    private final GuardedRuns guard;
    private final RunReads reads;
    private final CheckpointRegistry checkpoints;
    private final StepHistory history;
    private final RootCauseAnalyzer analyzer = new RootCauseAnalyzer();

    public RestViews(GuardedRuns guard, RunReads reads, CheckpointRegistry checkpoints, StepHistory history) {
        this.guard = guard;
        this.reads = reads;
        this.checkpoints = checkpoints;
        this.history = history;
    }

    public HistoryView history(String runId, Long from, Long to, int rank, int points) {
        return HistoryResource.view(guard, checkpoints, history, runId, from, to, rank, points);
    }

    public RootCauseReport report(String runId, long incidentId) {
        return IncidentResource.report(reads, checkpoints, history, analyzer, runId, incidentId);
    }

    public List<CheckpointView> checkpoints(String runId) {
        return checkpoints.list(runId).stream().map(c -> CheckpointView.of(c, checkpoints.progress(c.id()))).toList();
    }
}
