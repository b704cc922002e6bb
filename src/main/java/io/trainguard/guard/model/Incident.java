package io.trainguard.guard.model;

import java.time.Instant;

/** Something a person may want to read about later; journaled, shown in REST and GetRun. */
public record Incident(
        long id,
        String runId,
        int rank,
        long step,
        IncidentKind kind,
        Severity severity,
        String message,
        String module,
        Instant time) {
}
