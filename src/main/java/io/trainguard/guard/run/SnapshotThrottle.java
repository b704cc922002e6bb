package io.trainguard.guard.run;

/**
 * How often a routine healthy step rewrites the run's snapshot: building one walks every rank, and
 * the journaled step rows already carry the newest steps (replay reads them), so at most every
 * {@link #INTERVAL_NANOS}. Steps that must be durable or raise incidents always write one.
 */
final class SnapshotThrottle {
    static final long INTERVAL_NANOS = 250_000_000L;
    private long lastNanos = Long.MIN_VALUE / 2;

    /** True when this step writes a snapshot; records the time when it does. */
    boolean take(boolean forced, long nowNanos) {
        if (forced || nowNanos - lastNanos >= INTERVAL_NANOS) {
            lastNanos = nowNanos;
            return true;
        }
        return false;
    }
}
