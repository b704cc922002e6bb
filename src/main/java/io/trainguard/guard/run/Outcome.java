package io.trainguard.guard.run;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.RollbackPlan;

/** What evaluating one rank's step decided, before the decider writes it down. */
final class Outcome {
    Action action = Action.APPLY;
    double clip = Double.POSITIVE_INFINITY;
    String firstBadModule = "";
    RollbackPlan plan;
    /**
     * A SKIP that is neither a healthy step nor a faulty one for this rank: it neither ends nor
     * extends a streak, and has no commit to wait for. A loss scaler skipping its own overflow,
     * or the ranks skipping together on another rank's account, this rank's values finite (the
     * faulty rank's own report counts), as a restart rebuilds it from the journal, where such a
     * skip has no step-fault incident.
     */
    boolean neutralSkip;
}
