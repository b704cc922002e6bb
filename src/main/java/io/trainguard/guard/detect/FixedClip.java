package io.trainguard.guard.detect;

public final class FixedClip implements ClipRule {
    private final double threshold;

    public FixedClip(double threshold) {
        this.threshold = threshold;
    }

    @Override
    public double thresholdFor(double gradNorm) {
        return gradNorm > threshold ? threshold : Double.POSITIVE_INFINITY;
    }

    @Override
    public void observe(double gradNorm) {
    }

    @Override
    public double localThreshold() {
        return threshold;
    }

    @Override
    public double localAskAbove() {
        return Double.POSITIVE_INFINITY;
    }
}
