package io.trainguard.guard.run;

import io.trainguard.guard.detect.ClipRule;
import io.trainguard.guard.detect.DivergenceDetector;
import io.trainguard.guard.detect.FixedClip;
import io.trainguard.guard.detect.HangWatch;
import io.trainguard.guard.detect.NoClip;
import io.trainguard.guard.detect.PercentileClip;
import io.trainguard.guard.detect.SpikeDetector;
import io.trainguard.guard.detect.ZScoreClip;
import io.trainguard.guard.policy.Policy;


/** The statistics of one rank: every rank sees its own loss, so detectors are per rank. */
final class RankTrack {
    final int rank;
    final HangWatch hang;
    SpikeDetector lossSpikes;
    SpikeDetector gradSpikes;
    ClipRule clip;
    DivergenceDetector divergence;
    int consecutiveSkips;
    int healthyStreak;
    long lastStep = -1;
    boolean closed;

    RankTrack(int rank, Policy policy, long nowNanos) {
        this.rank = rank;
        this.hang = new HangWatch(nowNanos);
        rebuild(policy);
    }

    /** Rebuilds the detectors whose shape the policy defines; thresholds are read per step. */
    void rebuild(Policy policy) {
        lossSpikes = new SpikeDetector(policy.spikeEmaAlpha(), policy.spikeWarmupSteps(), policy.spikeZThreshold());
        gradSpikes = new SpikeDetector(policy.spikeEmaAlpha(), policy.spikeWarmupSteps(), policy.spikeZThreshold());
        clip = clipRule(policy);
        divergence = new DivergenceDetector(policy.divergenceRatio(), policy.divergenceWindow(), policy.spikeWarmupSteps());
    }

    void rebuildClip(Policy policy) {
        clip = clipRule(policy);
    }

    private static ClipRule clipRule(Policy policy) {
        return switch (policy.clipMode()) {
            case OFF -> new NoClip();
            case FIXED -> new FixedClip(policy.clipThreshold());
            case ZSCORE -> new ZScoreClip(policy.zclipAlpha(), Math.min(25, policy.spikeWarmupSteps()), policy.zclipZThreshold());
            case PERCENTILE -> new PercentileClip(policy.autoclipPercentile(), Math.min(25, policy.spikeWarmupSteps()));
        };
    }

    /** Feeds the statistics with an applied, finite step (also used to replay the journal after a restart). */
    void learn(double loss, boolean lossAbsent, double gradNorm) {
        if (!lossAbsent) {
            lossSpikes.observe(loss);
        }
        gradSpikes.observe(gradNorm);
        clip.observe(gradNorm);
    }
}
