package io.trainguard.checkpoint;

/**
 * A file of a checkpoint as the trainer registered it. {@code sha256} (hex) is null when not given;
 * {@code sizeBytes} is 0 when not given.
 */
public record CheckpointFileSpec(String path, String sha256, long sizeBytes) {
    public CheckpointFileSpec {
        if (path == null || path.isBlank()) {
            throw new IllegalArgumentException("a checkpoint file needs a path");
        }
        if (sha256 != null && sha256.isBlank()) {
            sha256 = null;
        }
    }
}
