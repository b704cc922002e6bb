package io.trainguard.guard.run;

import io.trainguard.guard.model.HangReport;
import io.trainguard.guard.policy.Policy;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * The ranks of one run and the questions asked across all of them (slowest healthy streak, worst
 * skip run, all closed, who hangs). Kept apart from {@link RunDecider} so the decider reads as
 * verdict logic, not map walks. Not thread-safe: the owning decider's lock guards it.
 */
final class RankTracks {

    /** How recently a rank's process must have been heard from to count as still holding it. */
    static final Duration LIVE = Duration.ofSeconds(60);

    private final Map<Integer, RankTrack> byRank = new HashMap<>();

    /** The rank's track, created on first sight (a plain get first: this runs on every step). */
    RankTrack track(int rank, Policy policy, long nowNanos) {
        RankTrack t = byRank.get(rank);
        if (t == null) {
            t = new RankTrack(rank, policy, nowNanos);
            byRank.put(rank, t);
        }
        return t;
    }

    /**
     * Another trainer process holding {@code rank} now, as seen before {@code trainerInstance} joins:
     * the rank is open under a different instance that was heard from within {@link #LIVE}. Two
     * processes training under one run id and rank merge their steps and evict each other's
     * in-memory snapshots.
     */
    Optional<RankHolder> otherHolder(int rank, String trainerInstance, long nowNanos) {
        RankTrack t = byRank.get(rank);
        if (t == null || t.closed || t.trainerInstance.isEmpty() || trainerInstance == null
                || trainerInstance.isEmpty() || t.trainerInstance.equals(trainerInstance)) {
            return Optional.empty();
        }
        long quiet = nowNanos - t.hang.lastSeenNanos();
        return quiet < LIVE.toNanos() ? Optional.of(new RankHolder(t.trainerInstance, Duration.ofNanos(quiet), t.lastStep))
                : Optional.empty();
    }

    boolean known(int rank) {
        return byRank.containsKey(rank);
    }

    RankTrack get(int rank) {
        return byRank.get(rank);
    }

    /**
     * Whether every open rank has had {@code steps} healthy steps in a row: the run recovers only when
     * every rank has. {@code current}'s own streak is read first, so the walk over all ranks runs only
     * once the rank just stepped could complete the recovery.
     */
    boolean allHealthyFor(RankTrack current, int steps) {
        return current.healthyStreak >= steps
                && byRank.values().stream().filter(t -> !t.closed).allMatch(t -> t.healthyStreak >= steps);
    }

    int maxConsecutiveSkips() {
        return byRank.values().stream().mapToInt(t -> t.consecutiveSkips).max().orElse(0);
    }

    boolean allClosed() {
        return byRank.values().stream().allMatch(x -> x.closed);
    }

    void clearSkips() {
        for (RankTrack t : byRank.values()) {
            t.consecutiveSkips = 0;
        }
    }

    /**
     * Rebuilds what the new policy invalidates: a new spike/divergence shape discards the learned
     * statistics; a new clip rule only the clip state (the spike history stays valid).
     */
    void policyChanged(Policy before, Policy next) {
        boolean shapeChanged = before.spikeEmaAlpha() != next.spikeEmaAlpha() || before.spikeWarmupSteps() != next.spikeWarmupSteps()
                || before.divergenceRatio() != next.divergenceRatio() || before.divergenceWindow() != next.divergenceWindow();
        boolean clipChanged = before.clipMode() != next.clipMode() || before.clipThreshold() != next.clipThreshold()
                || before.zclipAlpha() != next.zclipAlpha() || before.zclipZThreshold() != next.zclipZThreshold()
                || before.autoclipPercentile() != next.autoclipPercentile();
        for (RankTrack t : byRank.values()) {
            if (shapeChanged) {
                t.stats.rebuild(next);
            } else if (clipChanged) {
                t.stats.rebuildClip(next);
            }
        }
    }

    /** Adds a report for each open rank overdue by the policy's hang allowance. */
    /**
     * Another trainer process opened a run on this sidecar: the ranks of this run that are hung and held
     * by another process are taken as that process's restart (the kubelet restarted the trainer
     * container the trainer health group marked DOWN, or the user restarted the job under a new run
     * id). Left hung, they kept the group DOWN for good and the probe killed every new trainer.
     * Returns the ranks settled.
     */
    List<Integer> settleHangs(String trainerInstance, Policy policy, long nowNanos) {
        List<Integer> settled = new ArrayList<>();
        if (trainerInstance == null || trainerInstance.isEmpty()) {
            return settled;  // a trainer that does not say which process it is settles nothing
        }
        for (RankTrack t : byRank.values()) {
            if (t.closed || t.trainerInstance.equals(trainerInstance)) {
                continue;
            }
            if (!t.hang.overdue(nowNanos, policy.hangFactor(), policy.hangMin(), policy.hangMax()).isZero()) {
                t.hang.reopened(nowNanos);
                settled.add(t.rank);
            }
        }
        return settled;
    }

    void closeAll() {
        byRank.values().forEach(t -> t.closed = true);
    }

    List<HangReport> hangs(String runId, Policy policy, long nowNanos) {
        List<HangReport> out = new ArrayList<>();
        for (RankTrack t : byRank.values()) {
            if (t.closed) {
                continue;
            }
            var overdue = t.hang.overdue(nowNanos, policy.hangFactor(), policy.hangMin(), policy.hangMax());
            if (!overdue.isZero()) {
                out.add(new HangReport(runId, t.rank, t.hang.lastStep(), t.hang.phase(),
                        t.hang.sinceLastProgress(nowNanos), t.hang.allowance(policy.hangFactor(), policy.hangMin(), policy.hangMax())));
            }
        }
        return out;
    }
}
