package io.trainguard.guard.policy;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.model.ClipMode;
import java.time.Duration;

/**
 * Everything that decides how strict a run is; its fields, ranges and defaults are listed once in
 * {@link PolicyField}. Build through a {@link Builder} ({@link PolicyField#defaults()}, {@link #toBuilder()}):
 * its {@code build()} is the one validation. The sidecar's configured defaults are one Policy;
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

        private Builder() {
        }

        /** Nothing set: for building a policy field by field from the schema's defaults. */
        static Builder empty() {
            return new Builder();
        }

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

        /** Every field in its range ({@link PolicyField}), or InvalidRequestException naming the key. */
        public Policy build() {
            Policy p = new Policy(clipMode, clipThreshold, maxConsecutiveSkips, validationWarmupSteps,
                    validationIntervalSteps, spikeZThreshold, spikeEmaAlpha, spikeWarmupSteps, spikeAction,
                    zclipZThreshold, zclipAlpha, autoclipPercentile, knownGoodHealthySteps, rollbackSkipBatches,
                    rollbackLrFactor, rollbackRewarmSteps, maxRollbacks, rollbackWindowSteps, preflightMode,
                    hangFactor, hangMin, hangMax, crossRankRtol, divergenceWindow, divergenceRatio, recoverySteps);
            PolicyField.validate(p);
            return p;
        }
    }
}
