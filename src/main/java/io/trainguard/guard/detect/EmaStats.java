package io.trainguard.guard.detect;

/**
 * Mean and variance of a signal: exact (Welford) over the first {@code warmup} samples, then an
 * exponential moving window with weight {@code alpha} on the past. The exact start keeps one lucky
 * first sample from defining "normal" for the next hundred steps.
 */
public final class EmaStats {
    private final double alpha;
    private final int warmup;
    private long count;
    private double mean;
    private double variance;
    private double m2;

    public EmaStats(double alpha, int warmup) {
        this.alpha = alpha;
        this.warmup = warmup;
    }

    public void observe(double x) {
        if (!Double.isFinite(x)) {
            return;
        }
        count++;
        if (count <= warmup) {
            double delta = x - mean;
            mean += delta / count;
            m2 += delta * (x - mean);
            variance = count > 1 ? m2 / (count - 1) : 0;
            return;
        }
        double delta = x - mean;
        mean += (1 - alpha) * delta;
        variance = alpha * (variance + (1 - alpha) * delta * delta);
    }

    public boolean warmedUp() {
        return count >= warmup;
    }

    /** Samples still to learn before the warm-up ends (0 once it has). */
    public long samplesToWarmUp() {
        return Math.max(0, warmup - count);
    }

    public int warmup() {
        return warmup;
    }

    public double mean() {
        return mean;
    }

    public double std() {
        return Math.sqrt(Math.max(variance, 0));
    }

    /** z-score of x; a flat signal (std ~ 0) compares against a small fraction of the mean instead. */
    public double zScore(double x) {
        double floor = Math.max(Math.abs(mean) * 1e-3, 1e-12);
        return (x - mean) / Math.max(std(), floor);
    }
}
