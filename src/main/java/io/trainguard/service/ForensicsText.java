package io.trainguard.service;

import io.trainguard.checkpoint.CheckpointRecord;
import io.trainguard.tensor.inspect.CheckpointTensorSummary;
import io.trainguard.tensor.inspect.TensorSummary;
import java.util.List;

/** The journaled text of an InspectTensors summary: one line per tensor, offenders first. */
final class ForensicsText {
    private ForensicsText() {
    }

    static String describe(long aboutIncident, List<TensorSummary> summaries) {
        StringBuilder b = new StringBuilder("tensor forensics");
        if (aboutIncident > 0) {
            b.append(" for incident ").append(aboutIncident);
        }
        b.append(": ").append(summaries.size()).append(" tensor(s)");
        summaries.stream().sorted((x, y) -> Long.compare(y.nanCount() + y.infCount(), x.nanCount() + x.infCount()))
                .forEach(s -> b.append("; ").append(s.name()).append(' ').append(s.dtype()).append(s.shape())
                        .append(" nan=").append(s.nanCount()).append(" inf=").append(s.infCount())
                        .append(s.firstNonFiniteIndices().isEmpty() ? "" : " first=" + s.firstNonFiniteIndices())
                        .append(String.format(" finite min=%.4g max=%.4g mean=%.4g std=%.4g", s.min(), s.max(), s.mean(), s.std())));
        return b.toString();
    }

    /** Offending tensors listed (at most 8, most non-finite values first), then how many were finite. */
    static String describeCheckpoint(CheckpointRecord c, List<CheckpointTensorSummary> sorted) {
        StringBuilder b = new StringBuilder("checkpoint forensics of ").append(c.id()).append(" (step ")
                .append(c.step()).append(", ").append(c.state()).append("): ").append(sorted.size()).append(" tensor(s)");
        List<CheckpointTensorSummary> bad = sorted.stream().filter(t -> t.nonFiniteCount() > 0).toList();
        bad.stream().limit(8).forEach(t -> {
            TensorSummary s = t.summary();
            b.append("; ").append(t.file()).append(':').append(s.name()).append(' ').append(s.dtype()).append(s.shape())
                    .append(" nan=").append(s.nanCount()).append(" inf=").append(s.infCount())
                    .append(" first=").append(s.firstNonFiniteIndices()).append(' ').append(t.unit()).append("s=")
                    .append(t.firstNonFiniteUnits()).append(t.nonFiniteUnits() > t.firstNonFiniteUnits().size()
                            ? "+" + (t.nonFiniteUnits() - t.firstNonFiniteUnits().size()) : "")
                    .append(String.format(" finite min=%.4g max=%.4g mean=%.4g std=%.4g", s.min(), s.max(), s.mean(),
                            s.std()));
        });
        if (bad.size() > 8) {
            b.append("; ").append(bad.size() - 8).append(" more non-finite tensor(s)");
        }
        b.append("; ").append(sorted.size() - bad.size()).append(" finite");
        return b.toString();
    }
}
