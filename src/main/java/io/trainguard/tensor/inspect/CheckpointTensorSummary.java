package io.trainguard.tensor.inspect;

import java.util.List;

/**
 * Forensics of one tensor of a checkpoint file: the {@link TensorSummary} (NaN/Inf counts, first
 * flat indices, finite-part min/max/mean/std) plus where the non-finite values sit. A
 * {@code unit} is a row (index along dimension 0, {@code unitElements} elements each) for a tensor
 * of two or more dimensions, a block of {@code unitElements} consecutive elements otherwise.
 */
public record CheckpointTensorSummary(
        String file,
        TensorSummary summary,
        String unit,
        long unitElements,
        long nonFiniteUnits,
        List<Long> firstNonFiniteUnits) {

    public long nonFiniteCount() {
        return summary.nanCount() + summary.infCount();
    }
}
