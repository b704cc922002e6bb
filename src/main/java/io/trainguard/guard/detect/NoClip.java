package io.trainguard.guard.detect;

public final class NoClip implements ClipRule {
    @Override
    public double thresholdFor(double gradNorm) {
        return Double.POSITIVE_INFINITY;
    }

    @Override
    public void observe(double gradNorm) {
    }

    @Override
    public double localThreshold() {
        return 0;
    }

    @Override
    public double localAskAbove() {
        return Double.POSITIVE_INFINITY;
    }
}
