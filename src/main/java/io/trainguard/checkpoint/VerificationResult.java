package io.trainguard.checkpoint;

import io.trainguard.tensor.scan.TensorStats;
import java.util.List;
import java.util.Map;

/**
 * Outcome of verifying every file of a checkpoint. {@code outcome} is VERIFIED, REJECTED or
 * UNVERIFIABLE; {@code reason} is empty when verified. {@code fileChecksums} maps each file's
 * path to its content checksum, "tg1:<16 hex>" or "crc32c:<8 hex>" as configured (and the sha256
 * when one was given and matched).
 */
public record VerificationResult(
        CheckpointState outcome,
        String reason,
        List<TensorStats> tensors,
        Map<String, String> fileChecksums,
        long bytes,
        long nanos) {

    public boolean ok() {
        return outcome == CheckpointState.VERIFIED;
    }

    public double bytesPerSecond() {
        return nanos == 0 ? 0 : bytes * 1e9 / nanos;
    }

    static VerificationResult failed(CheckpointState outcome, String reason, long bytes, long nanos) {
        return new VerificationResult(outcome, reason, List.of(), Map.of(), bytes, nanos);
    }
}
