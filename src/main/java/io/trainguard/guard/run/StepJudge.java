package io.trainguard.guard.run;

import io.trainguard.guard.detect.CrossRankCheck;
import io.trainguard.guard.detect.Detectors;
import io.trainguard.guard.detect.Finding;
import io.trainguard.guard.detect.LossScaleOverflow;
import io.trainguard.guard.detect.StepContext;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.policy.Policy;
import java.util.List;

/**
 * What one rank's step report says on its own, before the run's course: a loss scaler's own overflow,
 * the detectors' findings folded into one action, what the rank's statistics learn, and its skip
 * streak (past the policy's limit the step asks for a ROLLBACK). Touches only the rank's track;
 * {@link RunDecider} turns the result into the run's state, incidents and rollback.
 */
final class StepJudge {
    private StepJudge() {
    }

    /** The findings to file, and whether the step was a SKIP (before a streak made it a ROLLBACK). */
    record Judged(List<Finding> findings, boolean skipped) {
    }

    static Judged judge(StepReport r, RankTrack t, Policy policy, List<String> watchedModules, CrossRankCheck crossRank,
                        int worldSize, List<String> reasons, Outcome o) {
        String spikeOverflow = LossScaleOverflow.spikeReason(r, t.stats.lossSpikes, policy.spikeZThreshold());
        if (spikeOverflow != null) {
            reasons.add(spikeOverflow);
        } else if (LossScaleOverflow.of(r)) {
            // the scaler's own skip while it calibrates: no detector learns from it, no incident, and
            // it neither extends nor ends a skip streak
            o.action = Action.SKIP;
            o.neutralSkip = true;
            reasons.add(LossScaleOverflow.reason(r));
            return new Judged(List.of(), false);
        }
        StepFold fold = StepFold.of(Detectors.inspect(new StepContext(r, policy, t.stats, watchedModules, crossRank, worldSize)));
        o.action = fold.action();
        o.neutralSkip = r.skippedByAgreement() && fold.incidents().stream().noneMatch(f -> IncidentKind.STEP_FAULTS.contains(f.kind()));
        o.clip = fold.clip();
        o.firstBadModule = fold.module();
        reasons.addAll(fold.reasons());
        if (o.action == Action.APPLY || o.action == Action.CLIP) {
            t.stats.learn(r.loss(), r.lossAbsent(), r.gradNorm());
        }
        boolean skipped = o.action == Action.SKIP;
        if (!skipped) {
            t.consecutiveSkips = 0;
        } else if (!o.neutralSkip) { // skipped on another rank's account: that rank's streak counts it
            t.consecutiveSkips++;
        }
        if (skipped && t.consecutiveSkips > policy.maxConsecutiveSkips()) {
            reasons.add(t.consecutiveSkips + " consecutive skipped steps (limit " + policy.maxConsecutiveSkips() + ")");
            o.action = Action.ROLLBACK;
        }
        return new Judged(fold.incidents(), skipped);
    }
}
