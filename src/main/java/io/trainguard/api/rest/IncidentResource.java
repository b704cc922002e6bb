package io.trainguard.api.rest;

import io.trainguard.checkpoint.CheckpointRecord;
import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.guard.RunReads;
import io.trainguard.guard.model.Incident;
import io.trainguard.report.Evidence;
import io.trainguard.report.RootCauseAnalyzer;
import io.trainguard.report.RootCauseReport;
import io.trainguard.store.StepHistory;
import jakarta.ws.rs.DefaultValue;
import jakarta.ws.rs.GET;
import jakarta.ws.rs.NotFoundException;
import jakarta.ws.rs.Path;
import jakarta.ws.rs.PathParam;
import jakarta.ws.rs.Produces;
import jakarta.ws.rs.QueryParam;
import jakarta.ws.rs.core.MediaType;
import jakarta.ws.rs.core.Response;
import java.util.Comparator;
import java.util.List;

/** A run's incidents and the root-cause report of each: /api/runs/{id}/incidents[/{incidentId}/report]. */
@Path("/api/runs/{runId}/incidents")
@Produces(MediaType.APPLICATION_JSON)
public class IncidentResource {
    /** Incidents read to build a report: enough for every run we have seen, bounded for a runaway one. */
    static final int EVIDENCE_INCIDENTS = 10_000;
    static final int TREND_STEPS = 200;

    private final RunReads reads;
    private final CheckpointRegistry checkpoints;
    private final StepHistory history;
    private final RootCauseAnalyzer analyzer = new RootCauseAnalyzer();

    public IncidentResource(RunReads reads, CheckpointRegistry checkpoints, StepHistory history) {
        this.reads = reads;
        this.checkpoints = checkpoints;
        this.history = history;
    }

    @GET
    public List<Incident> incidents(@PathParam("runId") String runId, @QueryParam("limit") @DefaultValue("200") int limit) {
        return reads.view(runId, Math.max(1, Math.min(limit, EVIDENCE_INCIDENTS))).incidents();
    }

    @GET
    @Path("/{incidentId}/report")
    public RootCauseReport report(@PathParam("runId") String runId, @PathParam("incidentId") long incidentId) {
        return report(reads, checkpoints, history, analyzer, runId, incidentId);
    }

    static RootCauseReport report(RunReads reads, CheckpointRegistry checkpoints, StepHistory history,
                                  RootCauseAnalyzer analyzer, String runId, long incidentId) {
        var view = reads.view(runId, EVIDENCE_INCIDENTS); // 404 for an unknown run
        Incident incident = view.incidents().stream().filter(i -> i.id() == incidentId).findFirst()
                .orElseThrow(() -> new NotFoundException(Response.status(404).type(MediaType.APPLICATION_JSON)
                        .entity(new GuardExceptionMapper.ErrorBody("IncidentNotFound", "run '" + runId
                                + "' has no incident " + incidentId + ": list them with GET /api/runs/" + runId + "/incidents"))
                        .build()));
        List<double[]> trend = incident.step() < 0 ? List.of() : history.stepsBefore(runId, incident.rank(), incident.step(), TREND_STEPS);
        long dataPosition = checkpoints.list(runId).stream().filter(c -> c.step() <= incident.step())
                .max(Comparator.comparingLong(CheckpointRecord::step)).map(CheckpointRecord::dataPosition).orElse(-1L);
        return analyzer.analyze(incident, new Evidence(view.run(), view.incidents(), trend, dataPosition));
    }

}
