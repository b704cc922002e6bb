package io.trainguard.guard.detect;

import io.trainguard.guard.policy.Policy;

/** The statistics of one rank that the detectors judge by: every rank sees its own loss. */
public final class RankStatistics {
    public SpikeDetector lossSpikes;
    public SpikeDetector gradSpikes;
    public ClipRule clip;
    public DivergenceDetector divergence;

    public RankStatistics(Policy policy) {
        rebuild(policy);
    }

    /** Rebuilds the detectors whose shape the policy defines; thresholds are read per step. */
    public void rebuild(Policy policy) {
        lossSpikes = new SpikeDetector(policy.spikeEmaAlpha(), policy.spikeWarmupSteps(), policy.spikeZThreshold());
        gradSpikes = new SpikeDetector(policy.spikeEmaAlpha(), policy.spikeWarmupSteps(), policy.spikeZThreshold());
        clip = clipRule(policy);
        divergence = new DivergenceDetector(policy.divergenceRatio(), policy.divergenceWindow(), policy.spikeWarmupSteps());
    }

    public void rebuildClip(Policy policy) {
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
    public void learn(double loss, boolean lossAbsent, double gradNorm) {
        if (!lossAbsent) {
            lossSpikes.observe(loss);
        }
        gradSpikes.observe(gradNorm);
        clip.observe(gradNorm);
    }
}
