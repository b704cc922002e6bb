package io.trainguard.checkpoint;

/** Too many verifications pending; maps to RESOURCE_EXHAUSTED (retry later). */
public final class VerificationQueueFullException extends RuntimeException {
    public VerificationQueueFullException(String message) {
        super(message);
    }
}
