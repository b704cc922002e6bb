package io.trainguard.guard.detect;

/** Chooses the clip threshold for a step's global grad norm, and learns from the norms it sees. */
public interface ClipRule {

    /** The threshold to clip this step's norm to; +inf when it needs no clipping. */
    double thresholdFor(double gradNorm);

    /** Learn from a finite norm of an applied step (each method decides whether raw or clipped). */
    void observe(double gradNorm);

    /** A threshold the client can clip to on its own until the next verdict (0 = none). */
    double localThreshold();

    /** The norm above which the client must ask the sidecar instead of deciding locally. */
    double localAskAbove();

    /** Learned norms still to come before {@link #localAskAbove} changes rule (none by default). */
    default long samplesUntilNextRule() {
        return Long.MAX_VALUE;
    }
}
