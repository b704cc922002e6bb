package io.trainguard.guard.detect;

/**
 * A value is a spike when its z-score over the moving window exceeds the threshold, after warm-up
 * (OLMo-core: mean + 6 sigma; here alpha and z are per run). Spikes are not folded into the
 * statistics, so one spike does not widen the window that judges the next.
 */
public final class SpikeDetector {
    private final EmaStats stats;

    public SpikeDetector(double alpha, int warmup) {
        this.stats = new EmaStats(alpha, warmup);
    }

    /** The threshold is passed per call so that a run's policy can change while it is going. */
    public boolean isSpike(double x, double zThreshold) {
        return stats.warmedUp() && Double.isFinite(x) && stats.zScore(x) > zThreshold;
    }

    public double zScore(double x) {
        return stats.zScore(x);
    }

    public void observe(double x) {
        stats.observe(x);
    }

    /** The largest value that is not a spike; +inf until warmed up. */
    public double upperBound(double zThreshold) {
        if (!stats.warmedUp()) {
            return Double.POSITIVE_INFINITY;
        }
        double floor = Math.max(Math.abs(stats.mean()) * 1e-3, 1e-12);
        return stats.mean() + zThreshold * Math.max(stats.std(), floor);
    }

    public double mean() {
        return stats.mean();
    }
}
