package io.trainguard.guard.detect;

import java.util.Arrays;

/**
 * AutoClip (Seetharaman et al. 2020): clip at the p-th percentile of the grad norms observed so far.
 * AutoClip records the raw norms. The history is capped (a ring of the most recent norms) so memory
 * stays bounded on week-long runs. Next to the ring, the same norms are kept sorted and updated in
 * place (one binary search and one array move per step instead of a copy and sort of 8192 values),
 * so the percentile is an index.
 */
public final class PercentileClip implements ClipRule {
    private static final int CAPACITY = 8192;
    private final double percentile;
    private final int warmup;
    private final double[] ring = new double[CAPACITY];
    private final double[] sorted = new double[CAPACITY];
    private int size;
    private int next;

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
        if (!Double.isFinite(gradNorm) || NoSignal.isExactZero(gradNorm)) {
            return;
        }
        if (size == CAPACITY) {
            remove(ring[next]);
        }
        insert(gradNorm);
        ring[next] = gradNorm;
        next = (next + 1) % CAPACITY;
    }

    private void remove(double v) {
        int at = Arrays.binarySearch(sorted, 0, size, v);
        System.arraycopy(sorted, at + 1, sorted, at, size - at - 1);
        size--;
    }

    private void insert(double v) {
        int at = Arrays.binarySearch(sorted, 0, size, v);
        if (at < 0) {
            at = -at - 1;
        }
        System.arraycopy(sorted, at, sorted, at + 1, size - at);
        sorted[at] = v;
        size++;
    }

    private double current() {
        if (size < Math.max(1, warmup)) {
            return Double.POSITIVE_INFINITY;
        }
        int index = (int) Math.ceil(percentile / 100.0 * size) - 1;
        return sorted[Math.max(0, Math.min(size - 1, index))];
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
