package io.trainguard.tensor.format;

/**
 * A tensor file could not be accepted. {@link #reason()} is written for the person who owns the
 * checkpoint: what is wrong, where in the file, and what to do about it.
 */
public abstract class TensorFileException extends RuntimeException {
    protected TensorFileException(String reason, Throwable cause) {
        super(reason, cause);
    }

    public String reason() {
        return getMessage();
    }
}
