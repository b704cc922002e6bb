package io.trainguard.guard.detect;

import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.StepReport;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/** Where a step went non-finite. The first module in forward order is the provenance people need. */
public record NonFiniteFinding(IncidentKind kind, String module, String message) {

    public static NonFiniteFinding of(StepReport r, List<String> watchedModules) {
        List<String> parts = new ArrayList<>();
        IncidentKind kind = null;
        String module = "";
        List<String> names = r.moduleNames().isEmpty() ? watchedModules : r.moduleNames();
        boolean lossOrGradsNonFinite = (!r.lossAbsent() && !Double.isFinite(r.loss())) || !Double.isFinite(r.gradNorm())
                || Arrays.stream(r.groupGradNorms()).anyMatch(g -> !Double.isFinite(g));
        int first = firstNonFiniteModule(r);
        // An output's Inf alone is masking (-inf logits for invalid actions or a vocabulary), not a
        // fault: an Inf that reaches the update shows in the loss or the gradients. A NaN in an output
        // is one. The step is charged to the first non-finite output, Inf included: an fp16 overflow
        // shows as Inf before the NaN it makes downstream.
        if (first >= 0 && (lossOrGradsNonFinite || anyNaNModule(r))) {
            module = first < names.size() ? names.get(first) : "#" + first;
            kind = IncidentKind.NON_FINITE_MODULE;
            parts.add("non-finite values first appeared in module '" + module + "' (" + position(names, first) + ")");
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

    private static int firstNonFiniteModule(StepReport r) {
        int n = Math.max(r.moduleFinite().length, r.moduleMaxAbs().length);
        for (int i = 0; i < n; i++) {
            boolean finite = (i >= r.moduleFinite().length || r.moduleFinite()[i])
                    && (i >= r.moduleMaxAbs().length || Double.isFinite(r.moduleMaxAbs()[i]));
            if (!finite) {
                return i;
            }
        }
        return -1;
    }

    /** A NaN in a watched output: its max |x| is NaN (a client that sends only flags: a false flag). */
    private static boolean anyNaNModule(StepReport r) {
        int n = Math.max(r.moduleFinite().length, r.moduleMaxAbs().length);
        for (int i = 0; i < n; i++) {
            boolean nan = i < r.moduleMaxAbs().length ? Double.isNaN(r.moduleMaxAbs()[i]) : !r.moduleFinite()[i];
            if (nan) {
                return true;
            }
        }
        return false;
    }

    /**
     * Where entry i ran. The client sends one entry per module call, so a module called several
     * times (one Dropout before and after an RNN) has several entries, and the first non-finite
     * entry is the call where NaN appeared, not that module's first call. [detect, issue 15]
     */
    private static String position(List<String> names, int i) {
        if (i >= names.size()) {
            return "index " + i + " in forward order";
        }
        String name = names.get(i);
        List<Integer> at = new ArrayList<>();
        for (int j = 0; j < names.size(); j++) {
            if (names.get(j).equals(name)) {
                at.add(j);
            }
        }
        if (at.size() == 1) {
            return "index " + i + " in forward order";
        }
        int call = at.indexOf(i) + 1;
        return "its call " + call + " of " + at.size() + " this step, index " + i + " in forward order; the module ran at indices "
                + at + (call > 1 ? ", its earlier calls were finite" : "");
    }
}
