package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.TensorDType;
import java.util.List;

/**
 * What a checkpoint verification learned about one tensor. {@code maxAbs} and {@code l2Norm} are
 * over the finite elements; {@code checksum} is the content checksum of the tensor's bytes as stored,
 * "tg1:<16 hex>" ({@link ContentHash}) or "crc32c:<8 hex>" (null when checksums were off or the path
 * that read it could not see the raw bytes). maxAbs and
 * l2Norm are NaN when statistics were off (finite check only).
 */
public record TensorStats(
        String name,
        TensorDType dtype,
        List<Long> shape,
        long elements,
        long nanCount,
        long infCount,
        long firstNonFiniteIndex,
        double maxAbs,
        double l2Norm,
        String checksum) {

    public long nonFiniteCount() {
        return nanCount + infCount;
    }

    public boolean finite() {
        return nonFiniteCount() == 0;
    }

    static TensorStats of(String name, TensorDType dtype, long[] shape, ScanAccumulator a) {
        List<Long> s = java.util.Arrays.stream(shape).boxed().toList();
        return new TensorStats(name, dtype, s, a.elements, a.nanCount, a.infCount, a.firstNonFinite,
                a.statsSkipped ? Double.NaN : a.maxAbs, a.statsSkipped ? Double.NaN : Math.sqrt(a.sumSquares),
                a.checksumValue());
    }
}
