package io.trainguard.service;

import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.Severity;
import io.trainguard.tensor.inspect.RawTensor;
import io.trainguard.tensor.inspect.TensorInspector;
import io.trainguard.tensor.inspect.TensorSummary;
import java.nio.ByteBuffer;
import java.util.List;
import java.util.function.Supplier;

/** InspectTensors: summarize a trainer's suspect tensors (DJL) and journal the summary as an incident of the run. */
public final class TensorForensics {
    private final GuardedRuns guard;
    private final TensorInspector inspector;

    /** The incident the summary was journaled as, and the summaries themselves. */
    public record Result(long incidentId, List<TensorSummary> summaries) {
    }

    public TensorForensics(GuardedRuns guard, TensorInspector inspector) {
        this.guard = guard;
        this.inspector = inspector;
    }

    /** @param aboutIncident the incident these tensors explain; 0 when they stand alone */
    public Result inspect(String runId, int rank, long step, long aboutIncident, List<RawTensor> tensors) {
        return journaled(runId, rank, step, aboutIncident, () -> inspector.inspect(tensors));
    }

    /** The same for one safetensors blob. */
    public Result inspectSafetensors(String runId, int rank, long step, long aboutIncident, ByteBuffer blob) {
        return journaled(runId, rank, step, aboutIncident, () -> inspector.inspectSafetensors(blob));
    }

    private Result journaled(String runId, int rank, long step, long aboutIncident, Supplier<List<TensorSummary>> inspect) {
        guard.run(runId); // NOT_FOUND for an unknown run before any native memory is spent
        List<TensorSummary> summaries = inspect.get();
        var incident = guard.recordIncident(runId, rank, step, IncidentKind.TENSOR_FORENSICS, Severity.INFO,
                ForensicsText.describe(aboutIncident, summaries));
        return new Result(incident.id(), summaries);
    }
}
