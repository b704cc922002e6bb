package io.trainguard.api.rest;

import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.store.StepHistory;
import jakarta.ws.rs.DefaultValue;
import jakarta.ws.rs.GET;
import jakarta.ws.rs.Path;
import jakarta.ws.rs.PathParam;
import jakarta.ws.rs.Produces;
import jakarta.ws.rs.QueryParam;
import jakarta.ws.rs.core.MediaType;
import java.util.List;

/** Step history for charts and scripts: GET /api/runs/{id}/steps. */
@Path("/api/runs/{runId}/steps")
@Produces(MediaType.APPLICATION_JSON)
public class HistoryResource {
    static final int MAX_POINTS = 10_000;
    static final int MAX_INCIDENTS = 2_000;

    private final GuardedRuns guard;
    private final CheckpointRegistry checkpoints;
    private final StepHistory history;

    public HistoryResource(GuardedRuns guard, CheckpointRegistry checkpoints, StepHistory history) {
        this.guard = guard;
        this.checkpoints = checkpoints;
        this.history = history;
    }

    @GET
    public HistoryView steps(@PathParam("runId") String runId, @QueryParam("from") Long from, @QueryParam("to") Long to,
                             @QueryParam("rank") @DefaultValue("0") int rank,
                             @QueryParam("points") @DefaultValue("1000") int points) {
        return view(guard, checkpoints, history, runId, from, to, rank, points);
    }

    /** Shared with the run page, so the page draws exactly what the API serves. */
    static HistoryView view(GuardedRuns guard, CheckpointRegistry checkpoints, StepHistory history, String runId,
                            Long from, Long to, int rank, int points) {
        RunSnapshot run = guard.run(runId).snapshot(); // 404 for an unknown run
        if (points < 1 || points > MAX_POINTS) {
            throw new InvalidRequestException("points must be between 1 and " + MAX_POINTS + ", got " + points);
        }
        if (rank < 0 || rank >= run.worldSize()) {
            throw new InvalidRequestException("rank " + rank + " is outside world size " + run.worldSize()
                    + ": ranks are 0.." + (run.worldSize() - 1));
        }
        if (from != null && to != null && to < from) {
            throw new InvalidRequestException("to (" + to + ") is before from (" + from + "): swap them");
        }
        StepHistory.Range range = history.steps(runId, rank, from, to, points);
        List<StepHistory.Event> incidents = history.incidents(runId, from, to, MAX_INCIDENTS);
        List<HistoryView.CheckpointMark> marks = checkpoints.list(runId).stream()
                .filter(c -> (from == null || c.step() >= from) && (to == null || c.step() <= to))
                .map(c -> new HistoryView.CheckpointMark(c.id(), c.step(), c.state().name(), c.stateReason()))
                .toList();
        List<StepHistory.Event> rollbacks = incidents.stream().filter(e -> e.kind().equals("ROLLBACK")).toList();
        return new HistoryView(runId, run.state().name(), range, incidents, marks, rollbacks);
    }
}
