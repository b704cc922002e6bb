package io.trainguard.checkpoint;

/** Maps to NOT_FOUND. */
public final class CheckpointNotFoundException extends RuntimeException {
    public CheckpointNotFoundException(String message) {
        super(message);
    }
}
