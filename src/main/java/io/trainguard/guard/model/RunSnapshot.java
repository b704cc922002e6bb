package io.trainguard.guard.model;

import io.trainguard.guard.policy.Policy;
import java.time.Instant;
import java.util.List;

/** Everything needed to show a run and to continue it after a sidecar restart. */
public record RunSnapshot(
        String runId,
        int worldSize,
        RunState state,
        String stateReason,
        long lastStep,
        int consecutiveSkips,
        int rollbacks,
        int rollbackAttempts,
        long lastRollbackStep,
        RollbackPlan pendingRollback,
        Policy policy,
        List<String> watchedModules,
        Instant createdTime,
        Instant updatedTime,
        long stepsReported,
        long haltStep) {
}
