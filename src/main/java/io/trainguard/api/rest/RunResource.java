package io.trainguard.api.rest;

import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.RunReads;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.policy.Policy;
import io.trainguard.service.RunOverview;
import jakarta.ws.rs.Consumes;
import jakarta.ws.rs.DefaultValue;
import jakarta.ws.rs.GET;
import jakarta.ws.rs.POST;
import jakarta.ws.rs.PUT;
import jakarta.ws.rs.Path;
import jakarta.ws.rs.PathParam;
import jakarta.ws.rs.Produces;
import jakarta.ws.rs.QueryParam;
import jakarta.ws.rs.core.MediaType;
import java.util.List;

/** JSON view of the runs for people and dashboards; the same engine calls as gRPC. */
@Path("/api/runs")
@Produces(MediaType.APPLICATION_JSON)
@Consumes(MediaType.APPLICATION_JSON)
public class RunResource {
    private final GuardedRuns guard;
    private final RunReads reads;
    private final RunOverview overview;

    public RunResource(GuardedRuns guard, RunReads reads, RunOverview overview) {
        this.guard = guard;
        this.reads = reads;
        this.overview = overview;
    }

    public record RunDetail(RunSnapshot run, List<Incident> incidents, List<CheckpointView> checkpoints) {
    }

    @GET
    public List<RunSnapshot> list() {
        return reads.list();
    }

    @GET
    @Path("/{runId}")
    public RunDetail get(@PathParam("runId") String runId, @QueryParam("incidents") @DefaultValue("50") int incidents) {
        var view = overview.get(runId, incidents);
        return new RunDetail(view.run(), view.incidents(),
                view.checkpoints().stream().map(c -> CheckpointView.of(c.record(), c.progress())).toList());
    }

    @GET
    @Path("/{runId}/checkpoints")
    public List<CheckpointView> checkpoints(@PathParam("runId") String runId) {
        return overview.checkpoints(runId).stream().map(c -> CheckpointView.of(c.record(), c.progress())).toList();
    }

    @PUT
    @Path("/{runId}/policy")
    public Policy updatePolicy(@PathParam("runId") String runId, PolicyPatch patch) {
        if (patch == null) { // an empty or `null` body: say what to send instead of a 500
            throw new io.trainguard.guard.InvalidRequestException("the body must be a JSON object of policy fields, "
                    + "e.g. {\"clipThreshold\": 2.0, \"reason\": \"...\"}");
        }
        return guard.updatePolicy(runId, patch::applyTo, patch.reason());
    }

    @POST
    @Path("/{runId}/resume")
    public RunSnapshot resume(@PathParam("runId") String runId, ResumeRequest request) {
        return guard.resume(runId, request == null ? "" : request.reason());
    }

    @POST
    @Path("/{runId}/close")
    public RunSnapshot close(@PathParam("runId") String runId, ResumeRequest request) {
        return guard.closeByOperator(runId, request == null ? "" : request.reason());
    }

    /** The body of an operator's resume or close: why (journaled). */
    public record ResumeRequest(String reason) {
    }
}
