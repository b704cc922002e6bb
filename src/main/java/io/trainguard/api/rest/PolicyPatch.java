package io.trainguard.api.rest;

import io.trainguard.guard.Action;
import io.trainguard.guard.AuditMode;
import io.trainguard.guard.ClipMode;
import io.trainguard.guard.Policy;

/** A partial policy in JSON: absent (null) fields keep their current value. */
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
        Double autoclipPercentile,
        Integer knownGoodHealthySteps,
        Double rollbackLrFactor,
        Integer maxRollbacks,
        Double hangFactor,
        Double crossRankRtol,
        Integer divergenceWindow,
        Double divergenceRatio,
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
        if (autoclipPercentile != null) b.autoclipPercentile = autoclipPercentile;
        if (knownGoodHealthySteps != null) b.knownGoodHealthySteps = knownGoodHealthySteps;
        if (rollbackLrFactor != null) b.rollbackLrFactor = rollbackLrFactor;
        if (maxRollbacks != null) b.maxRollbacks = maxRollbacks;
        if (hangFactor != null) b.hangFactor = hangFactor;
        if (crossRankRtol != null) b.crossRankRtol = crossRankRtol;
        if (divergenceWindow != null) b.divergenceWindow = divergenceWindow;
        if (divergenceRatio != null) b.divergenceRatio = divergenceRatio;
        if (preflightMode != null) b.preflightMode = preflightMode;
        return b;
    }
}
