package io.trainguard.guard.model;

import io.trainguard.guard.policy.Policy;
import java.util.List;
import java.util.function.UnaryOperator;

/** One rank's OpenRun: who it is, how it trains, and which defaults it wants changed. */
public record RunSetup(
        String runId,
        int rank,
        int worldSize,
        UnaryOperator<Policy.Builder> policyOverrides,
        List<ParameterGroup> parameterGroups,
        List<String> watchedModules,
        PrecisionSetup precision,
        String trainerInstance) {
}
