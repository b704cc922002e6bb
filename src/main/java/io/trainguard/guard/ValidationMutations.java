package io.trainguard.guard;

import io.trainguard.guard.model.ValidationAudit;
import java.util.ArrayList;
import java.util.List;

/** The incident text for a validation pass that left the training model changed: what changed and how to avoid it. */
final class ValidationMutations {
    private ValidationMutations() {
    }

    static String message(long step, ValidationAudit audit) {
        List<String> what = new ArrayList<>();
        if (audit.parametersChanged()) {
            what.add("parameters changed");
        }
        if (audit.dtypeDeviceModeChanged()) {
            what.add("dtype/device/train-mode changed");
        }
        if (audit.wiringChanged()) {
            what.add("module wiring changed (forward replaced or patched)");
        }
        if (audit.rngChanged()) {
            what.add("RNG state changed");
        }
        return "validation at step " + step + " left the training model changed: " + String.join(", ", what)
                + (audit.details().isEmpty() ? "" : " (" + String.join("; ", audit.details()) + ")")
                + (audit.restored() ? "; the client restored the model" : "; NOT restored: the run continues on a changed model")
                + ". Validate on a copy of the model (copy.deepcopy) or undo pipeline patches after validation.";
    }
}
