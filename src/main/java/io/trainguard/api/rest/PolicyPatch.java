package io.trainguard.api.rest;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.model.ClipMode;
import io.trainguard.guard.policy.Policy;
import java.time.Duration;

/**
 * A partial policy in JSON: absent (null) fields keep their current value. Every field of
 * {@link Policy} can be set, as over gRPC UpdatePolicy; durations as ISO-8601 ("PT30S").
 */
public record PolicyPatch(
        ClipMode clipMode,
        Double clipThreshold,
        Integer maxConsecutiveSkips,
        Long validationWarmupSteps,
        Long validationIntervalSteps,
        Double spikeZThreshold,
        Double spikeEmaAlpha,
        Integer spikeWarmupSteps,
        Action spikeAction,
        Double zclipZThreshold,
        Double zclipAlpha,
        Double autoclipPercentile,
        Integer knownGoodHealthySteps,
        Long rollbackSkipBatches,
        Double rollbackLrFactor,
        Long rollbackRewarmSteps,
        Integer maxRollbacks,
        Long rollbackWindowSteps,
        Double hangFactor,
        Duration hangMin,
        Duration hangMax,
        Double crossRankRtol,
        Integer divergenceWindow,
        Double divergenceRatio,
        Integer recoverySteps,
        AuditMode preflightMode,
        String reason) {

    Policy.Builder applyTo(Policy.Builder b) {
        if (clipMode != null) b.clipMode = clipMode;
        if (clipThreshold != null) b.clipThreshold = clipThreshold;
        if (maxConsecutiveSkips != null) b.maxConsecutiveSkips = maxConsecutiveSkips;
        if (validationWarmupSteps != null) b.validationWarmupSteps = validationWarmupSteps;
        if (validationIntervalSteps != null) b.validationIntervalSteps = validationIntervalSteps;
        if (spikeZThreshold != null) b.spikeZThreshold = spikeZThreshold;
        if (spikeEmaAlpha != null) b.spikeEmaAlpha = spikeEmaAlpha;
        if (spikeWarmupSteps != null) b.spikeWarmupSteps = spikeWarmupSteps;
        if (spikeAction != null) b.spikeAction = spikeAction;
        if (zclipZThreshold != null) b.zclipZThreshold = zclipZThreshold;
        if (zclipAlpha != null) b.zclipAlpha = zclipAlpha;
        if (autoclipPercentile != null) b.autoclipPercentile = autoclipPercentile;
        if (knownGoodHealthySteps != null) b.knownGoodHealthySteps = knownGoodHealthySteps;
        if (rollbackSkipBatches != null) b.rollbackSkipBatches = rollbackSkipBatches;
        if (rollbackLrFactor != null) b.rollbackLrFactor = rollbackLrFactor;
        if (rollbackRewarmSteps != null) b.rollbackRewarmSteps = rollbackRewarmSteps;
        if (maxRollbacks != null) b.maxRollbacks = maxRollbacks;
        if (rollbackWindowSteps != null) b.rollbackWindowSteps = rollbackWindowSteps;
        if (hangFactor != null) b.hangFactor = hangFactor;
        if (hangMin != null) b.hangMin = hangMin;
        if (hangMax != null) b.hangMax = hangMax;
        if (crossRankRtol != null) b.crossRankRtol = crossRankRtol;
        if (divergenceWindow != null) b.divergenceWindow = divergenceWindow;
        if (divergenceRatio != null) b.divergenceRatio = divergenceRatio;
        if (recoverySteps != null) b.recoverySteps = recoverySteps;
        if (preflightMode != null) b.preflightMode = preflightMode;
        return b;
    }
}
