package io.trainguard.guard.model;

import java.time.Duration;

public record HangReport(String runId, int rank, long lastStep, Phase phase, Duration silentFor, Duration allowed) {
}
