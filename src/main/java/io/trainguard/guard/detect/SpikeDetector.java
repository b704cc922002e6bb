package io.trainguard.guard.detect;

/**
 * A value is a spike when its z-score over the moving window exceeds the threshold, after warm-up
 * (OLMo-core: mean + 6 sigma; here alpha and z are per run). Before warm-up, and as an absolute
 * sanity bound after it, a {@link RobustBaseline} judges upward outliers from the first sample on.
 *
 * <p>Outliers never enter the statistics: a value above the bound in force is not learned, so a
 * spike that was applied anyway (spike action CLIP, or decided locally) cannot widen the window
 * that judges the next one. A lasting jump of the level is therefore reported at every step
 * (a SKIP run rolls back after {@code max_consecutive_skips}); a loss that is 13x higher for good
 * is not a healthy run.
 */
public final class SpikeDetector {
    /**
     * Robust bounds in units of z (the policy's spike threshold, 6 by default), so one setting
     * scales every spike rule and {@code spike_z_threshold = 1e9} still turns spike detection off.
     * Early (8+ samples, before the EMA warmed up): median + 2z spreads, 13x the level at z = 6.
     * Sanity (the first samples, and after warm-up): median + 16z spreads, ~100x the level.
     */
    static final double EARLY_SPREADS_PER_Z = 2;
    static final double SANITY_SPREADS_PER_Z = 16;
    private final EmaStats stats;
    private final RobustBaseline level = new RobustBaseline();
    private double lastZ;

    /** {@code zThreshold}: the threshold learning uses until a judgement passes another one. */
    public SpikeDetector(double alpha, int warmup, double zThreshold) {
        this.stats = new EmaStats(alpha, warmup);
        this.lastZ = zThreshold;
    }

    /** The threshold is passed per call so that a run's policy can change while it is going. */
    public boolean isSpike(double x, double zThreshold) {
        return Double.isFinite(x) && x > upperBound(zThreshold);
    }

    public double zScore(double x) {
        return stats.zScore(x);
    }

    /**
     * Learns an applied value; a spike (above the bound of the last judgement) is not learned at all.
     * Winsorizing is not enough here: 17 exploded steps in a row, each admitted at the bound, still
     * drag the mean up for a hundred steps.
     */
    public void observe(double x) {
        if (!Double.isFinite(x) || NoSignal.isExactZero(x) || x > upperBound(lastZ)) {
            return;
        }
        stats.observe(x);
        level.observe(x);
    }

    /**
     * How many more learned samples until the bound is taken by another rule: the early robust
     * bound (about 13x the level, from {@code MIN_SAMPLES} on) replaces the first samples' ~100x one,
     * and the EMA bound comes in at warm-up. {@code Long.MAX_VALUE} once warmed up, and before the
     * first sample (no bound in force: a run that never reports this signal, e.g. without a loss).
     */
    public long samplesUntilNextRule() {
        long n = level.count();
        if (n == 0 || stats.warmedUp()) {
            return Long.MAX_VALUE;
        }
        return n < RobustBaseline.MIN_SAMPLES ? RobustBaseline.MIN_SAMPLES - n : stats.samplesToWarmUp();
    }

    /** The largest value that is not a spike; +inf before the first sample. */
    public double upperBound(double zThreshold) {
        lastZ = zThreshold;
        if (!stats.warmedUp()) {
            boolean early = level.count() >= RobustBaseline.MIN_SAMPLES;
            return level.upperBound(zThreshold * (early ? EARLY_SPREADS_PER_Z : SANITY_SPREADS_PER_Z));
        }
        return Math.min(emaBound(zThreshold), level.upperBound(zThreshold * SANITY_SPREADS_PER_Z));
    }

    private double emaBound(double zThreshold) {
        // The std floor follows the run's own scale (its peak level), not an absolute 1e-12: a run
        // converged to grad norms of 1e-14 must not see round-off as a 6-sigma spike.
        double floor = Math.max(Math.abs(stats.mean()) * 1e-3, Math.max(level.peak() * 1e-3, 1e-12));
        return stats.mean() + zThreshold * Math.max(stats.std(), floor);
    }

    /** Why x is a spike, in words: the rule that fired and what it compared x with. */
    public String explain(String signal, double x, double zThreshold) {
        if (stats.warmedUp() && x > emaBound(zThreshold)) {
            return String.format("%s spike: %.6g is %.1f sigma above its moving mean %.6g (threshold %.1f)",
                    signal, x, stats.zScore(x), stats.mean(), zThreshold);
        }
        double ratio = level.ratio(x);
        String times = !Double.isFinite(ratio) ? "far above"
                : String.format(ratio >= 1e6 ? "%.3gx" : ratio >= 10 ? "%.0fx" : "%.1fx", ratio);
        String when = stats.warmedUp() ? "sanity bound" : String.format(
                "judged before the %d-sample warm-up of the moving statistics", stats.warmup());
        return String.format("%s spike: %.6g is %s the median %.6g of its last %d values (bound %.6g; %s)",
                signal, x, times, level.median(), Math.min(level.count(), RobustBaseline.WINDOW),
                upperBound(zThreshold), when);
    }

    /** The typical value: the moving mean once warmed up, the robust median before; 0 with no data. */
    public double mean() {
        if (level.count() == 0) {
            return 0;
        }
        return stats.warmedUp() ? stats.mean() : level.median();
    }

    public boolean warmedUp() {
        return stats.warmedUp();
    }
}
