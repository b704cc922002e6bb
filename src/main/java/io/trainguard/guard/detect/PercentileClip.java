package io.trainguard.guard.detect;

import java.util.Arrays;

/**
 * AutoClip (Seetharaman et al. 2020): clip at the p-th percentile of the grad norms observed so far.
 * AutoClip records the raw norms. The history is capped (a ring of the most recent norms) so memory
 * stays bounded on week-long runs; the percentile is recomputed lazily.
 */
public final class PercentileClip implements ClipRule {
    private static final int CAPACITY = 8192;
    private final double percentile;
    private final int warmup;
    private final double[] ring = new double[CAPACITY];
    private int size;
    private int next;
    private double cached = Double.NaN;

    public PercentileClip(double percentile, int warmup) {
        this.percentile = percentile;
        this.warmup = warmup;
    }

    @Override
    public double thresholdFor(double gradNorm) {
        double t = current();
        return gradNorm > t ? t : Double.POSITIVE_INFINITY;
    }

    @Override
    public void observe(double gradNorm) {
        if (!Double.isFinite(gradNorm)) {
            return;
        }
        ring[next] = gradNorm;
        next = (next + 1) % CAPACITY;
        size = Math.min(size + 1, CAPACITY);
        cached = Double.NaN;
    }

    private double current() {
        if (size < Math.max(1, warmup)) {
            return Double.POSITIVE_INFINITY;
        }
        if (Double.isNaN(cached)) {
            double[] sorted = Arrays.copyOf(ring, size);
            Arrays.sort(sorted);
            int index = (int) Math.ceil(percentile / 100.0 * size) - 1;
            cached = sorted[Math.max(0, Math.min(size - 1, index))];
        }
        return cached;
    }

    @Override
    public double localThreshold() {
        double t = current();
        return Double.isFinite(t) ? t : 0;
    }

    @Override
    public double localAskAbove() {
        return Double.POSITIVE_INFINITY;
    }
}
