package io.trainguard.tensor.inspect;

import io.trainguard.tensor.format.TensorDType;
import java.util.List;

/**
 * Forensic summary of one tensor shipped with an incident (mirrors trainguard.v1.TensorSummary).
 * min/max/mean/std are over the finite elements (NaN when there are none); std is the population
 * standard deviation.
 */
public record TensorSummary(
        String name,
        TensorDType dtype,
        List<Long> shape,
        long nanCount,
        long infCount,
        List<Long> firstNonFiniteIndices,
        double min,
        double max,
        double mean,
        double std) {
}
