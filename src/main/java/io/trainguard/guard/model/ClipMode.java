package io.trainguard.guard.model;

public enum ClipMode {
    OFF,
    FIXED,
    /** ZClip: EMA mean and deviation of the grad norm; clip norms whose z-score exceeds the threshold. */
    ZSCORE,
    /** AutoClip: clip at a percentile of the grad norms seen so far. */
    PERCENTILE
}
