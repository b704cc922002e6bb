package io.trainguard.guard;

import java.time.Duration;

public record HangReport(String runId, int rank, long lastStep, Phase phase, Duration silentFor, Duration allowed) {
}
