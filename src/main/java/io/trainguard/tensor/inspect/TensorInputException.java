package io.trainguard.tensor.inspect;

/** A tensor sent for inspection is malformed or over a limit; maps to INVALID_ARGUMENT. */
public final class TensorInputException extends RuntimeException {
    public TensorInputException(String message) {
        super(message);
    }
}
