package io.trainguard.service;

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
}
