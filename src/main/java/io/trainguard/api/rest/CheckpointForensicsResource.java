package io.trainguard.api.rest;

import io.trainguard.service.CheckpointForensics;
import io.trainguard.tensor.inspect.CheckpointTensorSummary;
import io.smallrye.common.annotation.Blocking;
import jakarta.ws.rs.Consumes;
import jakarta.ws.rs.POST;
import jakarta.ws.rs.Path;
import jakarta.ws.rs.PathParam;
import jakarta.ws.rs.Produces;
import jakarta.ws.rs.core.MediaType;
import java.util.List;

/**
 * POST /api/runs/{runId}/checkpoints/{checkpointId}/forensics: the same checkpoint forensics as the
 * InspectCheckpoint RPC (a POST: it journals an incident). Body {@code {"tensors": [...]}} or {@code {}}.
 */
@Path("/api/runs/{runId}/checkpoints/{checkpointId}/forensics")
@Produces(MediaType.APPLICATION_JSON)
@Consumes(MediaType.APPLICATION_JSON)
public class CheckpointForensicsResource {
    private final CheckpointForensics forensics;

    public CheckpointForensicsResource(CheckpointForensics forensics) {
        this.forensics = forensics;
    }

    public record ForensicsRequest(List<String> tensors) {
    }

    public record ForensicsView(long incidentId, String checkpointId, long bytesInspected, long elapsedMs,
            List<CheckpointTensorSummary> tensors) {
    }

    @POST
    @Blocking
    public ForensicsView inspect(@PathParam("runId") String runId, @PathParam("checkpointId") String checkpointId,
            ForensicsRequest request) {
        var r = forensics.inspect(runId, checkpointId,
                request == null || request.tensors() == null ? List.of() : request.tensors());
        return new ForensicsView(r.incidentId(), r.checkpointId(), r.bytes(), r.elapsedMs(), r.tensors());
    }
}
