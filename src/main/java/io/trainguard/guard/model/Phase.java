package io.trainguard.guard.model;

/** What a rank is doing; each phase has its own learned duration for hang detection. */
public enum Phase {
    STEP,
    VALIDATION,
    CHECKPOINT_SAVE,
    IDLE
}
