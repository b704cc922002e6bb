package io.trainguard.guard.model;

import java.util.List;

public record Verdict(
        long step,
        Action action,
        double clipThreshold,
        boolean validationAllowed,
        List<String> reasons,
        String firstNonFiniteModule,
        RunState runState,
        RollbackPlan rollback,
        LocalBounds bounds,
        List<Long> incidentIds) {
}
