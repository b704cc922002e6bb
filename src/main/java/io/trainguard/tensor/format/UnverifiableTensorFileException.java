package io.trainguard.tensor.format;

/**
 * The file may well be fine but the sidecar cannot check it (a torch.save pickle, which can only
 * be read by executing Python code; a format DJL does not read). Never treated as verified.
 */
public final class UnverifiableTensorFileException extends TensorFileException {
    public UnverifiableTensorFileException(String reason) {
        super(reason, null);
    }

    public UnverifiableTensorFileException(String reason, Throwable cause) {
        super(reason, cause);
    }
}
