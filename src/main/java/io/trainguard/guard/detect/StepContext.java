package io.trainguard.guard.detect;

import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.policy.Policy;
import java.util.List;

/** What a detector may look at: the report, the run's policy, the rank's statistics and the run's cross-rank check. */
public record StepContext(StepReport report, Policy policy, RankStatistics rank, List<String> watchedModules,
                          CrossRankCheck crossRank, int worldSize) {
}
