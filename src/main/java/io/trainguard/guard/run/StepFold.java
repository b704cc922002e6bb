package io.trainguard.guard.run;

import io.trainguard.guard.detect.Finding;
import io.trainguard.guard.model.Action;
import java.util.ArrayList;
import java.util.List;

/**
 * Folds a step's findings into one verdict. The strongest proposed action wins, in the documented
 * priority APPLY < CLIP < SKIP < ROLLBACK < HALT (the order of {@link Action}); a CLIP clips to the
 * lowest cap proposed; reasons and incidents keep the detectors' order.
 */
record StepFold(Action action, double clip, List<String> reasons, List<Finding> incidents, String module) {

    static StepFold of(List<Finding> findings) {
        Action action = Action.APPLY;
        double cap = Double.POSITIVE_INFINITY;
        String module = "";
        List<String> reasons = new ArrayList<>(findings.size());
        List<Finding> incidents = new ArrayList<>(findings.size());
        for (Finding f : findings) {
            boolean overruled = f.action().ordinal() < action.ordinal();
            if (f.advisory() && overruled) {
                continue; // e.g. a clip threshold for a step already being skipped
            }
            if (!overruled) {
                action = f.action();
            }
            cap = Math.min(cap, f.clipCap());
            if (module.isEmpty() && !f.module().isEmpty()) {
                module = f.module();
            }
            reasons.add(f.reason());
            if (f.kind() != null) {
                incidents.add(f);
            }
        }
        return new StepFold(action, cap, reasons, incidents, module);
    }
}
