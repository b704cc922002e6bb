package io.trainguard.guard.model;

import java.time.Instant;

public record StepRecord(
        String runId,
        int rank,
        long step,
        double loss,
        double gradNorm,
        double learningRate,
        double lossScale,
        Action action,
        double clipThreshold,
        Instant time) {
}
