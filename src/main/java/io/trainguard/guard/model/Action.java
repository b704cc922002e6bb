package io.trainguard.guard.model;

/** What the trainer must do with the update of one step, ordered from least to most severe. */
public enum Action {
    APPLY,
    CLIP,
    SKIP,
    ROLLBACK,
    HALT;

    /** Actions that change the run's course must be journaled before the verdict leaves. */
    public boolean changesCourse() {
        return this == SKIP || this == ROLLBACK || this == HALT;
    }
}
