package io.trainguard.guard.detect;

import io.trainguard.guard.model.Phase;
import java.time.Duration;

/**
 * Learns how long each phase of a rank normally takes (steps, validation, checkpoint saves are
 * very different) and calls it a hang when the current phase has lasted longer than both
 * {@code factor} times its learned (EMA) duration and twice the longest whole interval seen in that
 * phase (NVRx style: an occasional long step, an evaluation or a save the guard was not told about,
 * once seen, never counts as a hang), clamped to [min, max]. Until a phase has been seen
 * {@link #WARMUP_INTERVALS} times, the max applies (the first steps compile kernels and load data;
 * they must not be judged by later ones). IDLE (a paused trainer) never hangs.
 */
public final class HangWatch {
    private static final double ALPHA = 0.9;
    /** Whole intervals of a phase seen before its learned duration is trusted. */
    static final int WARMUP_INTERVALS = 3;
    /** The longest interval seen, times this, is always allowed. */
    private static final double LONGEST_FACTOR = 2.0;
    /** Per phase (by ordinal): the learned duration, NaN until seen. Primitive: updated every step. */
    private final double[] learnedNanos = new double[Phase.values().length];
    private final long[] longestNanos = new long[Phase.values().length];
    private final int[] seen = new int[Phase.values().length];
    private Phase phase = Phase.IDLE;
    private long phaseStartNanos;
    private long lastSeenNanos;
    private long lastStep = -1;

    public HangWatch(long nowNanos) {
        java.util.Arrays.fill(learnedNanos, Double.NaN);
        phaseStartNanos = nowNanos;
        lastSeenNanos = nowNanos;
    }

    /** When the rank last reported progress (a step report or a heartbeat), or was opened. */
    public synchronized long lastSeenNanos() {
        return lastSeenNanos;
    }

    /**
     * The rank was opened again by a trainer process (a restart after a crash or a hang): the phase
     * the old process was in is over, and the new one has not reported yet. As for a rank opened the
     * first time, nothing is overdue until it reports (its start-up loads data and compiles); what
     * was learned of the phases stays.
     */
    public synchronized void reopened(long nowNanos) {
        phase = Phase.IDLE;
        phaseStartNanos = nowNanos;
        lastSeenNanos = nowNanos;
    }

    /** A rank reported progress (a step report or a heartbeat) at {@code nowNanos}. */
    public synchronized void progress(Phase reported, long step, long nowNanos) {
        boolean stepAdvanced = reported == Phase.STEP && phase == Phase.STEP && step != lastStep;
        if (reported != phase || stepAdvanced) {
            if (phase != Phase.IDLE && lastStep >= 0) {
                learn(phase, nowNanos - phaseStartNanos);
            }
            phase = reported;
            phaseStartNanos = nowNanos;
        }
        lastStep = step;
        lastSeenNanos = nowNanos;
    }

    private void learn(Phase p, long nanos) {
        seen[p.ordinal()]++;
        longestNanos[p.ordinal()] = Math.max(longestNanos[p.ordinal()], nanos);
        double old = learnedNanos[p.ordinal()];
        learnedNanos[p.ordinal()] = Double.isNaN(old) ? nanos : ALPHA * old + (1 - ALPHA) * nanos;
    }

    /** How long the current phase may last before it counts as a hang. */
    public synchronized Duration allowance(double factor, Duration min, Duration max) {
        double learned = learnedNanos[phase.ordinal()];
        if (Double.isNaN(learned) || seen[phase.ordinal()] < WARMUP_INTERVALS) {
            return max;
        }
        long nanos = (long) Math.max(learned * factor, longestNanos[phase.ordinal()] * LONGEST_FACTOR);
        return Duration.ofNanos(Math.max(min.toNanos(), Math.min(max.toNanos(), nanos)));
    }

    /** Zero when progressing normally; how long overdue otherwise. IDLE never hangs. */
    public synchronized Duration overdue(long nowNanos, double factor, Duration min, Duration max) {
        if (phase == Phase.IDLE) {
            return Duration.ZERO;
        }
        long elapsed = nowNanos - phaseStartNanos;
        long allowed = allowance(factor, min, max).toNanos();
        return elapsed > allowed ? Duration.ofNanos(elapsed - allowed) : Duration.ZERO;
    }

    public synchronized Phase phase() {
        return phase;
    }

    public synchronized long lastStep() {
        return lastStep;
    }

    public synchronized Duration sinceLastProgress(long nowNanos) {
        return Duration.ofNanos(nowNanos - lastSeenNanos);
    }
}
