package io.trainguard.guard.policy;

import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.model.ClipMode;
import java.time.Duration;

/**
 * Everything that decides how strict a run is. The sidecar's configured defaults are one Policy;
 * a run starts from them, with the trainer's overrides from OpenRun, and may change while running.
 */
public record Policy(
        ClipMode clipMode,
        double clipThreshold,
        int maxConsecutiveSkips,
        long validationWarmupSteps,
        long validationIntervalSteps,
        double spikeZThreshold,
        double spikeEmaAlpha,
        int spikeWarmupSteps,
        Action spikeAction,
        double zclipZThreshold,
        double zclipAlpha,
        double autoclipPercentile,
        int knownGoodHealthySteps,
        long rollbackSkipBatches,
        double rollbackLrFactor,
        long rollbackRewarmSteps,
        int maxRollbacks,
        long rollbackWindowSteps,
        AuditMode preflightMode,
        double hangFactor,
        Duration hangMin,
        Duration hangMax,
        double crossRankRtol,
        int divergenceWindow,
        double divergenceRatio,
        int recoverySteps) {

    public Policy {
        // Ranges, not only signs: 1e308 or Infinity thresholds turn protection off silently.
        // Turning something off is said explicitly (clip_mode=OFF, cross_rank_rtol=0).
        require(clipThreshold > 0 && clipThreshold <= 1e9, "clip_threshold must be in (0, 1e9]; use clip_mode=OFF to stop clipping");
        require(spikeZThreshold <= 1e3 && zclipZThreshold <= 1e3, "spike_z_threshold and zclip_z_threshold must be <= 1000");
        require(hangFactor <= 1e3, "hang_factor must be <= 1000");
        require(crossRankRtol <= 1, "cross_rank_rtol must be <= 1 (0 turns the check off)");
        require(divergenceRatio <= 1e6, "divergence_ratio must be <= 1e6");
        require(maxConsecutiveSkips >= 0, "max_consecutive_skips must be >= 0");
        require(validationWarmupSteps >= 0, "validation_warmup_steps must be >= 0");
        require(validationIntervalSteps >= 1, "validation_interval_steps must be >= 1");
        require(spikeZThreshold > 0, "spike_z_threshold must be > 0");
        require(spikeEmaAlpha > 0 && spikeEmaAlpha < 1, "spike_ema_alpha must be in (0, 1), e.g. 0.98");
        require(spikeWarmupSteps >= 1, "spike_warmup_steps must be >= 1");
        require(spikeAction == Action.CLIP || spikeAction == Action.SKIP || spikeAction == Action.ROLLBACK,
                "spike_action must be CLIP, SKIP or ROLLBACK");
        require(zclipZThreshold > 0, "zclip_z_threshold must be > 0");
        require(zclipAlpha > 0 && zclipAlpha < 1, "zclip alpha must be in (0, 1)");
        require(autoclipPercentile > 0 && autoclipPercentile <= 100, "autoclip_percentile must be in (0, 100]");
        require(knownGoodHealthySteps >= 0, "known_good_healthy_steps must be >= 0");
        require(rollbackSkipBatches >= 0, "rollback_skip_batches must be >= 0");
        require(rollbackLrFactor > 0 && rollbackLrFactor <= 1, "rollback_lr_factor must be in (0, 1]");
        require(rollbackRewarmSteps >= 0, "rollback_rewarm_steps must be >= 0");
        require(maxRollbacks >= 0, "max_rollbacks must be >= 0");
        require(rollbackWindowSteps >= 1, "rollback_window_steps must be >= 1");
        require(hangFactor > 1, "hang_factor must be > 1");
        require(!hangMin.isNegative() && hangMin.compareTo(hangMax) <= 0, "hang_min must be >= 0 and <= hang_max");
        require(crossRankRtol >= 0, "cross_rank_rtol must be >= 0 (0 turns the check off)");
        require(divergenceWindow >= 1, "divergence_window must be >= 1");
        require(divergenceRatio > 1, "divergence_ratio must be > 1");
        require(recoverySteps >= 1, "recovery_steps must be >= 1");
    }

    private static void require(boolean ok, String message) {
        if (!ok) {
            throw new InvalidRequestException("policy: " + message);
        }
    }

    public Builder toBuilder() {
        return new Builder(this);
    }

    /** Mutable copy used to apply partial overrides; {@link #build()} validates the result. */
    public static final class Builder {
        public ClipMode clipMode;
        public double clipThreshold;
        public int maxConsecutiveSkips;
        public long validationWarmupSteps;
        public long validationIntervalSteps;
        public double spikeZThreshold;
        public double spikeEmaAlpha;
        public int spikeWarmupSteps;
        public Action spikeAction;
        public double zclipZThreshold;
        public double zclipAlpha;
        public double autoclipPercentile;
        public int knownGoodHealthySteps;
        public long rollbackSkipBatches;
        public double rollbackLrFactor;
        public long rollbackRewarmSteps;
        public int maxRollbacks;
        public long rollbackWindowSteps;
        public AuditMode preflightMode;
        public double hangFactor;
        public Duration hangMin;
        public Duration hangMax;
        public double crossRankRtol;
        public int divergenceWindow;
        public double divergenceRatio;
        public int recoverySteps;

        private Builder(Policy p) {
            clipMode = p.clipMode;
            clipThreshold = p.clipThreshold;
            maxConsecutiveSkips = p.maxConsecutiveSkips;
            validationWarmupSteps = p.validationWarmupSteps;
            validationIntervalSteps = p.validationIntervalSteps;
            spikeZThreshold = p.spikeZThreshold;
            spikeEmaAlpha = p.spikeEmaAlpha;
            spikeWarmupSteps = p.spikeWarmupSteps;
            spikeAction = p.spikeAction;
            zclipZThreshold = p.zclipZThreshold;
            zclipAlpha = p.zclipAlpha;
            autoclipPercentile = p.autoclipPercentile;
            knownGoodHealthySteps = p.knownGoodHealthySteps;
            rollbackSkipBatches = p.rollbackSkipBatches;
            rollbackLrFactor = p.rollbackLrFactor;
            rollbackRewarmSteps = p.rollbackRewarmSteps;
            maxRollbacks = p.maxRollbacks;
            rollbackWindowSteps = p.rollbackWindowSteps;
            preflightMode = p.preflightMode;
            hangFactor = p.hangFactor;
            hangMin = p.hangMin;
            hangMax = p.hangMax;
            crossRankRtol = p.crossRankRtol;
            divergenceWindow = p.divergenceWindow;
            divergenceRatio = p.divergenceRatio;
            recoverySteps = p.recoverySteps;
        }

        /** Applies partial overrides and validates the result. */
        public Policy let(java.util.function.UnaryOperator<Builder> overrides) {
            return (overrides == null ? this : overrides.apply(this)).build();
        }

        public Policy build() {
            return new Policy(clipMode, clipThreshold, maxConsecutiveSkips, validationWarmupSteps,
                    validationIntervalSteps, spikeZThreshold, spikeEmaAlpha, spikeWarmupSteps, spikeAction,
                    zclipZThreshold, zclipAlpha, autoclipPercentile, knownGoodHealthySteps, rollbackSkipBatches,
                    rollbackLrFactor, rollbackRewarmSteps, maxRollbacks, rollbackWindowSteps, preflightMode,
                    hangFactor, hangMin, hangMax, crossRankRtol, divergenceWindow, divergenceRatio, recoverySteps);
        }
    }
}
