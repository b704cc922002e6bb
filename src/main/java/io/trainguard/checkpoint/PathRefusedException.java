package io.trainguard.checkpoint;

/** A checkpoint path outside the configured roots; maps to INVALID_ARGUMENT / PERMISSION_DENIED. */
public final class PathRefusedException extends RuntimeException {
    public PathRefusedException(String message) {
        super(message);
    }
}
