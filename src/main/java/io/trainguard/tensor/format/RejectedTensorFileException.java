package io.trainguard.tensor.format;

/** The file was read and is bad: malformed, truncated, changed while read, or not finite. */
public final class RejectedTensorFileException extends TensorFileException {
    public RejectedTensorFileException(String reason) {
        super(reason, null);
    }

    public RejectedTensorFileException(String reason, Throwable cause) {
        super(reason, cause);
    }
}
