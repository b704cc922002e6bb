package io.trainguard.guard.model;

public enum RunState {
    HEALTHY,
    /** Recent skips or spikes: validation is held back until enough healthy steps follow. */
    DEGRADED,
    /** A rollback was ordered; waiting for every rank to report from the restored position. */
    ROLLING_BACK,
    HALTED,
    CLOSED
}
