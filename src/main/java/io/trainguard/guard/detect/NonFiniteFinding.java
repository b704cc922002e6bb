package io.trainguard.guard.detect;

import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.StepReport;
import java.util.ArrayList;
import java.util.List;

/** Where a step went non-finite. The first module in forward order is the provenance people need. */
public record NonFiniteFinding(IncidentKind kind, String module, String message) {

    public static NonFiniteFinding of(StepReport r, List<String> watchedModules) {
        List<String> parts = new ArrayList<>();
        IncidentKind kind = null;
        String module = "";
        List<String> names = r.moduleNames().isEmpty() ? watchedModules : r.moduleNames();
        int n = Math.max(r.moduleFinite().length, r.moduleMaxAbs().length);
        for (int i = 0; i < n; i++) {
            boolean finite = (i >= r.moduleFinite().length || r.moduleFinite()[i])
                    && (i >= r.moduleMaxAbs().length || Double.isFinite(r.moduleMaxAbs()[i]));
            if (!finite) {
                module = i < names.size() ? names.get(i) : "#" + i;
                kind = IncidentKind.NON_FINITE_MODULE;
                parts.add("non-finite values first appeared in module '" + module + "' (index " + i + " in forward order)");
                break;
            }
        }
        if (!r.lossAbsent() && !Double.isFinite(r.loss())) {
            kind = kind == null ? IncidentKind.NON_FINITE_LOSS : kind;
            parts.add("loss is " + r.loss());
        }
        if (!Double.isFinite(r.gradNorm())) {
            kind = kind == null ? IncidentKind.NON_FINITE_GRAD : kind;
            parts.add("global grad norm is " + r.gradNorm());
        }
        for (int g = 0; g < r.groupGradNorms().length; g++) {
            if (!Double.isFinite(r.groupGradNorms()[g])) {
                kind = kind == null ? IncidentKind.NON_FINITE_GRAD : kind;
                parts.add("grad norm of parameter group " + g + " is " + r.groupGradNorms()[g]);
                break;
            }
        }
        return kind == null ? null : new NonFiniteFinding(kind, module, "step " + r.step() + ": " + String.join("; ", parts));
    }
}
