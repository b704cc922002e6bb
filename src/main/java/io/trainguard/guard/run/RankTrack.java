package io.trainguard.guard.run;

import io.trainguard.guard.detect.HangWatch;
import io.trainguard.guard.detect.RankStatistics;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.LocalBounds;
import io.trainguard.guard.model.StepRecord;
import io.trainguard.guard.policy.Policy;

/** One rank of a run: its detector statistics, hang watch and streaks. */
final class RankTrack {
    private static final int BOUNDS_VALID_STEPS = 64;
    /**
     * During the warm-up the level moves fast (the loss can fall 10x in 30 steps) and the bounds are
     * multiples of it: held for 64 steps by a fast asynchronous client, the bound of a level 10x higher
     * let a 40x loss spike be applied where the sidecar's own bound was 13x.
     */
    private static final int WARMUP_BOUNDS_VALID_STEPS = 8;
    final int rank;
    final HangWatch hang;
    final RankStatistics stats;
    int consecutiveSkips;
    int healthyStreak;
    long lastStep = -1;
    boolean closed;
    /** The trainer process that opened this rank last ("" when it did not say). */
    String trainerInstance = "";

    void heldBy(String instance) {
        if (instance != null && !instance.isEmpty()) {
            trainerInstance = instance;
        }
    }

    RankTrack(int rank, Policy policy, long nowNanos) {
        this.rank = rank;
        this.hang = new HangWatch(nowNanos);
        this.stats = new RankStatistics(policy);
    }

    /**
     * Relearns one journaled step after a restart, as deciding it did: only applied steps teach the
     * statistics. {@code faulted}: the journal holds a step-fault incident (non-finite, spike) of
     * this rank at this step. Every skip the detectors decide has one; a GradScaler's own overflow
     * and a skip taken together with the other ranks on another rank's account, the skips that
     * count in neither streak, have none.
     */
    void replay(StepRecord s, boolean faulted) {
        if (s.action() == Action.APPLY || s.action() == Action.CLIP) {
            stats.learn(s.loss(), Double.isNaN(s.loss()), s.gradNorm());
            stats.divergence.observe(s.loss());
            consecutiveSkips = 0;
            healthyStreak++;
        } else if (s.action() == Action.SKIP && faulted) {
            consecutiveSkips++;
            healthyStreak = 0;
        }
        lastStep = s.step();
    }

    /** What the client may decide on its own for this rank's next steps; nothing when {@code frozen}. */
    LocalBounds bounds(Policy policy, boolean frozen) {
        if (frozen) {
            return new LocalBounds(-1, Double.NEGATIVE_INFINITY, 0, lastStep);
        }
        double z = policy.spikeZThreshold();
        double maxGrad = Math.min(stats.gradSpikes.upperBound(z), stats.clip.localAskAbove());
        // Valid for a window of steps: asynchronous reports let the trainer run ahead of verdicts, and
        // a HALT/ROLLBACK found meanwhile still reaches it with the next verdict. Only until a bound
        // changes rule, though: the first samples' ~100x bound, held for the whole window by a client
        // whose verdicts lag, let a 60-80x loss spike at step 10 be applied locally where the sidecar,
        // with 8 samples, had a 13x bound.
        return new LocalBounds(maxGrad, stats.lossSpikes.upperBound(z), stats.clip.localThreshold(), lastStep + validSteps());
    }

    private long validSteps() {
        long untilNextRule = Math.min(Math.min(stats.lossSpikes.samplesUntilNextRule(),
                stats.gradSpikes.samplesUntilNextRule()), stats.clip.samplesUntilNextRule());
        long window = untilNextRule == Long.MAX_VALUE ? BOUNDS_VALID_STEPS : WARMUP_BOUNDS_VALID_STEPS;
        return Math.max(1, Math.min(window, untilNextRule));
    }
}
