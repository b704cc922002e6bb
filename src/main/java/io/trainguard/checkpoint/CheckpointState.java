package io.trainguard.checkpoint;

import java.util.EnumSet;
import java.util.Set;

/**
 * Mirrors trainguard.v1.CheckpointState. Every change goes through {@link #checkMove}: the
 * transition table below is the whole life cycle.
 */
public enum CheckpointState {
    REGISTERED, VERIFYING, VERIFIED, KNOWN_GOOD, REJECTED, UNVERIFIABLE, EVICTED;

    private Set<CheckpointState> next() {
        switch (this) {
            // VERIFYING -> REGISTERED: a restart interrupted the verification; it is queued again
            // -> EVICTED: a memory snapshot whose slot the trainer overwrote, or whose process is gone
            case REGISTERED: return EnumSet.of(VERIFYING, REJECTED, UNVERIFIABLE, EVICTED);
            case VERIFYING: return EnumSet.of(VERIFIED, REJECTED, UNVERIFIABLE, REGISTERED, EVICTED);
            // VERIFIED -> REJECTED: a non-finite step followed it before it earned KNOWN_GOOD
            case VERIFIED: return EnumSet.of(KNOWN_GOOD, REJECTED, EVICTED);
            case KNOWN_GOOD: return EnumSet.of(EVICTED);
            default: return EnumSet.noneOf(CheckpointState.class);
        }
    }

    /** No verification or promotion is ahead (a KNOWN_GOOD memory snapshot can still be evicted). */
    public boolean isTerminal() {
        return next().isEmpty() || this == KNOWN_GOOD;
    }

    public boolean canMoveTo(CheckpointState to) {
        return next().contains(to);
    }

    public void checkMove(CheckpointState to, String checkpointId) {
        if (!canMoveTo(to)) {
            throw new IllegalStateException("checkpoint " + checkpointId + " cannot go from " + this + " to " + to);
        }
    }
}
