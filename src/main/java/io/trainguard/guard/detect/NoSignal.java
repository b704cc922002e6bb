package io.trainguard.guard.detect;

/**
 * A loss or grad norm of exactly 0 says nothing about the run's level: a phase whose samples are all
 * masked, whose loss weight is 0, or whose model is frozen. The statistics do not learn it. Learned,
 * 17 such steps made the median of the robust window 0 and its spread 1% of the run's peak, so the
 * first normal step after the phase was a "spike" 100x the level; skipped, never learned, the level
 * stayed 0, and a healthy run was skipped, rolled back to its start and its LR halved. The EMA, the
 * clip rules and the divergence detector's best level were dragged down the same way.
 */
final class NoSignal {
    private NoSignal() {
    }

    static boolean isExactZero(double x) {
        return x == 0.0;
    }
}
