package io.trainguard.guard.detect;

/**
 * ZClip (Kumar et al. 2025): EMA mean and std of the grad norm; a norm whose z-score exceeds
 * {@code zThreshold} is clipped to {@code mean + zThreshold^2 * std / z}, and the statistics are
 * updated with the clipped value, so a burst of large norms cannot drag the mean up with it.
 */
public final class ZScoreClip implements ClipRule {
    private final EmaStats stats;
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
        stats.observe(Math.min(gradNorm, thresholdFor(gradNorm)));
    }

    @Override
    public double localThreshold() {
        return 0;
    }

    @Override
    public double localAskAbove() {
        return stats.warmedUp() ? stats.mean() + zThreshold * stats.std() : Double.POSITIVE_INFINITY;
    }
}
