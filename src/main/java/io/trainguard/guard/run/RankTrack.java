package io.trainguard.guard.run;

import io.trainguard.guard.detect.HangWatch;
import io.trainguard.guard.detect.RankStatistics;
import io.trainguard.guard.policy.Policy;

/** One rank of a run: its detector statistics, hang watch and streaks. */
final class RankTrack {
    final int rank;
    final HangWatch hang;
    final RankStatistics stats;
    int consecutiveSkips;
    int healthyStreak;
    long lastStep = -1;
    boolean closed;

    RankTrack(int rank, Policy policy, long nowNanos) {
        this.rank = rank;
        this.hang = new HangWatch(nowNanos);
        this.stats = new RankStatistics(policy);
    }
}
