package io.trainguard.guard.detect;

/**
 * ZClip (Kumar et al. 2025): EMA mean and std of the grad norm; a norm whose z-score exceeds
 * {@code zThreshold} is clipped to {@code mean + zThreshold^2 * std / z}, and the statistics are
 * updated with the clipped value, so a burst of large norms cannot drag the mean up with it.
 * During the warm-up (no clipping yet) the same holds: a norm is winsorized at a robust early bound
 * (median + 12 spreads of the norms so far, see {@link RobustBaseline}) before it is learned, so an
 * explosion in the first steps cannot become the mean that later steps are clipped against.
 */
public final class ZScoreClip implements ClipRule {
    static final double WARMUP_SPREADS = 12;
    static final double FIRST_SPREADS = 96; // fewer than 8 norms: only jumps of ~100x are sure outliers
    private final EmaStats stats;
    private final RobustBaseline level = new RobustBaseline();
    private final double zThreshold;

    public ZScoreClip(double alpha, int warmup, double zThreshold) {
        this.stats = new EmaStats(alpha, warmup);
        this.zThreshold = zThreshold;
    }

    @Override
    public double thresholdFor(double gradNorm) {
        if (!stats.warmedUp()) {
            return Double.POSITIVE_INFINITY;
        }
        double z = stats.zScore(gradNorm);
        if (z <= zThreshold) {
            return Double.POSITIVE_INFINITY;
        }
        return stats.mean() + zThreshold * zThreshold * stats.std() / z;
    }

    @Override
    public void observe(double gradNorm) {
        if (!Double.isFinite(gradNorm) || NoSignal.isExactZero(gradNorm)) {
            return;
        }
        double ceiling = stats.warmedUp() ? thresholdFor(gradNorm)
                : level.upperBound(level.count() >= RobustBaseline.MIN_SAMPLES ? WARMUP_SPREADS : FIRST_SPREADS);
        double admitted = Math.min(gradNorm, ceiling);
        stats.observe(admitted);
        level.observe(admitted);
    }

    @Override
    public double localThreshold() {
        return 0;
    }

    @Override
    public long samplesUntilNextRule() {
        long left = stats.samplesToWarmUp();  // +inf until warm-up, the EMA's bound from then on
        return left > 0 ? left : Long.MAX_VALUE;
    }

    @Override
    public double localAskAbove() {
        return stats.warmedUp() ? stats.mean() + zThreshold * stats.std() : Double.POSITIVE_INFINITY;
    }
}
