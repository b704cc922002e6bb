package io.trainguard.checkpoint;

import io.trainguard.tensor.scan.TensorStats;
import java.time.Instant;
import java.util.List;
import java.util.Map;

/**
 * A registered checkpoint as the journal keeps it. Immutable; the registry replaces it on every
 * change. {@code firstUnhealthyStep} is -1 until a non-finite step follows the checkpoint before
 * it is promoted. {@code lastCountedStep} makes healthy-step counting idempotent (a re-sent report
 * or a replay after a rollback is not counted twice).
 */
public record CheckpointRecord(
        String id,
        String runId,
        long step,
        CheckpointFormat format,
        List<CheckpointFileSpec> files,
        long dataPosition,
        CheckpointState state,
        String stateReason,
        Instant registeredAt,
        Instant updatedAt,
        int healthyStepsSince,
        long lastCountedStep,
        long firstUnhealthyStep,
        Map<String, String> fileChecksums,
        List<TensorStats> tensors,
        long verifiedBytes,
        double verifyBytesPerSecond) {

    CheckpointRecord moveTo(CheckpointState to, String reason, Instant now) {
        state.checkMove(to, id);
        return new CheckpointRecord(id, runId, step, format, files, dataPosition, to, reason, registeredAt, now,
                healthyStepsSince, lastCountedStep, firstUnhealthyStep, fileChecksums, tensors, verifiedBytes,
                verifyBytesPerSecond);
    }

    CheckpointRecord withHealthy(int count, long lastStep, Instant now) {
        return new CheckpointRecord(id, runId, step, format, files, dataPosition, state, stateReason, registeredAt,
                now, count, lastStep, firstUnhealthyStep, fileChecksums, tensors, verifiedBytes, verifyBytesPerSecond);
    }

    CheckpointRecord withUnhealthy(long unhealthyStep, Instant now) {
        return new CheckpointRecord(id, runId, step, format, files, dataPosition, state, stateReason, registeredAt,
                now, healthyStepsSince, lastCountedStep, unhealthyStep, fileChecksums, tensors, verifiedBytes,
                verifyBytesPerSecond);
    }

    CheckpointRecord withResult(VerificationResult r, Instant now) {
        return new CheckpointRecord(id, runId, step, format, files, dataPosition, state, stateReason, registeredAt,
                now, healthyStepsSince, lastCountedStep, firstUnhealthyStep, Map.copyOf(r.fileChecksums()),
                r.tensors(), r.bytes(), r.bytesPerSecond());
    }
}
