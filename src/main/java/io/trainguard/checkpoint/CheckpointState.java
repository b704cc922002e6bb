package io.trainguard.checkpoint;

import java.util.EnumSet;
import java.util.Set;

/**
 * Mirrors trainguard.v1.CheckpointState. Every change goes through {@link #checkMove}: the
 * transition table below is the whole life cycle.
 */
public enum CheckpointState {
    REGISTERED, VERIFYING, VERIFIED, KNOWN_GOOD, REJECTED, UNVERIFIABLE;

    private Set<CheckpointState> next() {
        switch (this) {
            // VERIFYING -> REGISTERED: a restart interrupted the verification; it is queued again
            case REGISTERED: return EnumSet.of(VERIFYING, REJECTED, UNVERIFIABLE);
            case VERIFYING: return EnumSet.of(VERIFIED, REJECTED, UNVERIFIABLE, REGISTERED);
            // VERIFIED -> REJECTED: a non-finite step followed it before it earned KNOWN_GOOD
            case VERIFIED: return EnumSet.of(KNOWN_GOOD, REJECTED);
            default: return EnumSet.noneOf(CheckpointState.class);
        }
    }

    public boolean isTerminal() {
        return next().isEmpty();
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
