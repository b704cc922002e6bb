package io.trainguard.guard.detect;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.policy.Policy;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;

/**
 * The detectors every step goes through, in the documented priority order, and the adapters that
 * turn the statistics classes of this package into findings. To add a detector: write it as a
 * {@link Detector} in its own file and add it to {@link #PIPELINE}.
 */
public final class Detectors {
    private Detectors() {
    }

    /**
     * Runs first. A non-finite value makes every statistic meaningless, so when it finds one no
     * other detector sees the step (and none learns from it).
     */
    public static final Detector NON_FINITE_GATE = Detectors::nonFinite;

    /** Every other detector, in order: findings keep this order in the verdict's reasons. */
    public static final List<Detector> PIPELINE = List.of(
            Detectors::spikes,
            Detectors::clipRule,
            Detectors::divergence,
            Detectors::crossRank);

    /**
     * The findings of one step. The non-finite gate runs first, also for a step the ranks skipped
     * together ({@link StepReport#skippedByAgreement()}): the flag cannot hide this rank's own fault.
     * A step skipped together on another rank's account is a SKIP that only the cross-rank check,
     * which names a rank whose norm differed, sees: no detector may learn from an update that did
     * not happen.
     */
    public static List<Finding> inspect(StepContext step) {
        List<Finding> out = new ArrayList<>(2);
        NON_FINITE_GATE.inspect(step, out);
        if (!out.isEmpty()) {
            return out;
        }
        if (step.report().skippedByAgreement()) {
            out.add(Finding.note(Action.SKIP, Double.POSITIVE_INFINITY, "update skipped on the device together with the "
                    + "other ranks: another rank saw a non-finite value or the ranks' grad norms disagreed"));
            crossRank(step, out);
            return out;
        }
        for (Detector d : PIPELINE) {
            d.inspect(step, out);
        }
        return out;
    }

    static void nonFinite(StepContext c, List<Finding> out) {
        NonFiniteFinding bad = NonFiniteFinding.of(c.report(), c.watchedModules());
        if (bad != null) {
            out.add(new Finding(bad.kind(), Severity.ERROR, Action.SKIP, Double.POSITIVE_INFINITY, bad.message(),
                    bad.message() + ": update skipped", bad.module(), false, Map.of()));
        }
    }

    /** Loss and grad-norm spikes over their EMA windows: the policy's spike action. */
    static void spikes(StepContext c, List<Finding> out) {
        StepReport r = c.report();
        Policy p = c.policy();
        RankStatistics s = c.rank();
        double z = p.spikeZThreshold();
        Action action = p.spikeAction();
        boolean alreadyApplied = r.decidedLocally() && action == Action.SKIP;
        if (alreadyApplied) {
            action = Action.CLIP; // the client applied this step within the bounds it had: it cannot be taken back
        }
        boolean spike = false;
        if (!r.lossAbsent() && s.lossSpikes.isSpike(r.loss(), z)) {
            spike = true;
            double zs = s.lossSpikes.zScore(r.loss());
            out.add(Finding.incident(IncidentKind.LOSS_SPIKE, Severity.WARNING, action,
                    Math.max(s.gradSpikes.mean(), Double.MIN_NORMAL),
                    s.lossSpikes.explain("loss", r.loss(), z), // robust from step 1: names the rule that fired
                    Map.of("value", r.loss(), "z", zs, "mean", s.lossSpikes.mean(), "threshold", z)));
        }
        if (s.gradSpikes.isSpike(r.gradNorm(), z)) {
            spike = true;
            double zs = s.gradSpikes.zScore(r.gradNorm());
            out.add(Finding.incident(IncidentKind.GRAD_SPIKE, Severity.WARNING, action, s.gradSpikes.upperBound(z),
                    s.gradSpikes.explain("grad-norm", r.gradNorm(), z),
                    Map.of("value", r.gradNorm(), "z", zs, "mean", s.gradSpikes.mean(), "threshold", z)));
        }
        if (spike && alreadyApplied) {
            out.add(Finding.note(Action.CLIP, Double.POSITIVE_INFINITY,
                    "the client had already applied this step within its local bounds"));
        }
    }

    /** The policy's clip rule (FIXED / ZClip / AutoClip): CLIP to its threshold. */
    static void clipRule(StepContext c, List<Finding> out) {
        double threshold = c.rank().clip.thresholdFor(c.report().gradNorm()); // the rule learns from every step
        if (c.report().decidedLocally()) {
            // the client applied this step with the bounds it had: what it clipped to is the record
            double applied = c.report().appliedClipThreshold();
            if (applied > 0 && c.report().gradNorm() > applied) {
                out.add(Finding.proposal(Action.CLIP, applied, String.format(
                        "grad norm %.6g above clip threshold %.6g (clipped by the client with its local bounds)",
                        c.report().gradNorm(), applied), Map.of("value", c.report().gradNorm(), "threshold", applied)));
            }
            return;
        }
        if (Double.isFinite(threshold)) {
            out.add(Finding.proposal(Action.CLIP, threshold, String.format("grad norm %.6g above clip threshold %.6g (%s)",
                    c.report().gradNorm(), threshold, c.policy().clipMode()),
                    Map.of("value", c.report().gradNorm(), "threshold", threshold)));
        }
    }

    /** Steady divergence of the loss: ROLLBACK. */
    static void divergence(StepContext c, List<Finding> out) {
        StepReport r = c.report();
        DivergenceDetector d = c.rank().divergence;
        if (!r.lossAbsent() && d.observe(r.loss())) {
            Policy p = c.policy();
            out.add(Finding.incident(IncidentKind.LOSS_SPIKE, Severity.ERROR, Action.ROLLBACK, Double.POSITIVE_INFINITY,
                    String.format("loss diverged: its short-term mean %.6g stayed above %.1fx its best %.6g for %d steps",
                            d.fast(), p.divergenceRatio(), d.best(), p.divergenceWindow()),
                    Map.of("fast", d.fast(), "best", d.best(), "ratio", p.divergenceRatio())));
        }
    }

    /** Data-parallel ranks must report the same global grad norm: an incident naming the odd rank. */
    static void crossRank(StepContext c, List<Finding> out) {
        StepReport r = c.report();
        double rtol = c.policy().crossRankRtol();
        c.crossRank().record(r.step(), r.rank(), r.gradNorm(), c.worldSize() > 1 ? rtol : 0).ifPresent(m ->
                out.add(Finding.incident(IncidentKind.CROSS_RANK_MISMATCH, Severity.ERROR, Action.APPLY,
                        Double.POSITIVE_INFINITY,
                        String.format("rank %d reports grad norm %.9g for step %d but rank %d reports %.9g: "
                                        + "data-parallel ranks must agree (rtol %.1g); %s",
                                m.rank(), m.norm(), r.step(), m.referenceRank(), m.referenceNorm(), rtol, suspectText(m)),
                        Map.of("norm", m.norm(), "referenceNorm", m.referenceNorm(), "rtol", rtol))));
    }

    private static String suspectText(CrossRankCheck.Mismatch m) {
        if (m.suspects().isEmpty()) {
            return String.format("which one is corrupted cannot be told from %d ranks' reports so far (no majority "
                    + "agrees); suspect silent data corruption on rank %d or rank %d", m.reported(), m.rank(), m.referenceRank());
        }
        String ranks = m.suspects().stream().map(String::valueOf).collect(Collectors.joining(", "));
        return String.format("%d of %d reported ranks agree; suspect silent data corruption on rank%s %s",
                m.agreeing(), m.reported(), m.suspects().size() == 1 ? "" : "s", ranks);
    }
}
