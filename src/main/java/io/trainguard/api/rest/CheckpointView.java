package io.trainguard.api.rest;

import io.trainguard.checkpoint.CheckpointFileSpec;
import io.trainguard.checkpoint.CheckpointRecord;
import io.trainguard.checkpoint.VerificationProgress;
import io.trainguard.tensor.scan.TensorStats;
import java.time.Instant;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A checkpoint as people read it: state, why, how far a running verification is, and each file's
 * content checksum (path to "tg1:..." or "crc32c:...", plus "sha256:..." when the trainer gave one).
 */
public record CheckpointView(
        String id,
        long step,
        String format,
        String state,
        String stateReason,
        List<String> files,
        long dataPosition,
        Instant registeredAt,
        int healthyStepsSince,
        double verifyPercent,
        double verifyBytesPerSecond,
        long verifiedBytes,
        int tensors,
        long nonFiniteValues,
        Map<String, String> checksums) {

    static CheckpointView of(CheckpointRecord c, Optional<VerificationProgress> progress) {
        double percent = progress.map(p -> 100 * p.fraction()).orElse(c.state().isTerminal() || c.verifiedBytes() > 0 ? 100.0 : 0.0);
        double rate = progress.map(VerificationProgress::bytesPerSecond).orElse(c.verifyBytesPerSecond());
        List<TensorStats> stats = c.tensors() == null ? List.of() : c.tensors();
        return new CheckpointView(c.id(), c.step(), c.format().name(), c.state().name(), c.stateReason(),
                c.files().stream().map(CheckpointFileSpec::path).toList(), c.dataPosition(), c.registeredAt(),
                c.healthyStepsSince(), percent, rate, c.verifiedBytes(), stats.size(),
                stats.stream().mapToLong(TensorStats::nonFiniteCount).sum(),
                c.fileChecksums() == null ? Map.of() : c.fileChecksums());
    }
}
