package io.trainguard.report;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.EnumSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Builds a {@link RootCauseReport} for one incident from the evidence trainguard already holds.
 * Each rule looks at one kind of evidence and adds a cause only when that evidence is there, so a
 * report never names a cause it cannot point at. Plain Java: no I/O, no framework.
 */
public final class RootCauseAnalyzer {

    private static final Set<IncidentKind> FAULTS = EnumSet.of(IncidentKind.NON_FINITE_LOSS, IncidentKind.NON_FINITE_GRAD,
            IncidentKind.NON_FINITE_MODULE, IncidentKind.LOSS_SPIKE, IncidentKind.GRAD_SPIKE, IncidentKind.ROLLBACK,
            IncidentKind.HALT, IncidentKind.TENSOR_FORENSICS, IncidentKind.CROSS_RANK_MISMATCH);
    private static final Pattern FINDING = Pattern.compile("^\\[([A-Z0-9_]+)]\\s*(.*)$", Pattern.DOTALL);
    /** Grad norm this many times its earlier median, just before the fault, is a trend worth naming. */
    static final double GROWTH = 3.0;
    static final int RECENT = 10;

    public RootCauseReport analyze(Incident incident, Evidence ev) {
        List<RootCauseReport.Cause> causes = new ArrayList<>();
        List<String> checked = new ArrayList<>();
        boolean fault = FAULTS.contains(incident.kind());

        validationSideEffect(incident, ev, causes, checked);
        preflight(incident, ev, causes, checked, fault);
        if (fault) {
            gradNormGrowth(ev, causes, checked);
            lossScaleCollapse(ev, causes, checked);
            warmupEnd(ev, causes, checked);
            crossRank(incident, ev, causes, checked);
            repeatedAtSameStep(incident, ev, causes, checked);
        }
        if (causes.isEmpty()) {
            causes.add(new RootCauseReport.Cause("NO_EVIDENCE", "no cause visible in what trainguard recorded",
                    "none of the checks below found anything before step " + incident.step(),
                    fault ? "inspect the batch of step " + incident.step() + " (guard.inspect / InspectTensors) and "
                            + "the module named above; report the data position with each step so repeats are detected"
                            : "nothing to change unless this repeats"));
        }
        return new RootCauseReport(incident.id(), incident.runId(), incident.kind().name(), incident.severity().name(),
                incident.message(), where(incident, ev), causes, checked);
    }

    private static RootCauseReport.Where where(Incident i, Evidence ev) {
        String module = i.module() == null ? "" : i.module();
        StringBuilder d = new StringBuilder("rank ").append(i.rank()).append(", step ").append(i.step());
        if (!module.isEmpty()) {
            d.append(", first non-finite module in forward order: ").append(module);
        }
        if (ev.dataPosition() >= 0) {
            d.append(", data position ").append(ev.dataPosition()).append(" at the last checkpoint before it");
        }
        return new RootCauseReport.Where(i.rank(), i.step(), module, ev.dataPosition(), d.toString());
    }

    /** A validation pass that changed the model explains this incident (or faults after it). */
    private static void validationSideEffect(Incident incident, Evidence ev, List<RootCauseReport.Cause> causes,
                                             List<String> checked) {
        checked.add("validation audits");
        List<Incident> mutations = ev.runIncidents().stream()
                .filter(x -> x.kind() == IncidentKind.VALIDATION_MUTATION && x.step() <= incident.step())
                .sorted(Comparator.comparingLong(Incident::step)).toList();
        if (mutations.isEmpty()) {
            return;
        }
        Incident first = mutations.get(0);
        String m = first.message().toLowerCase(Locale.ROOT);
        List<String> how = new ArrayList<>();
        if (m.contains("wiring changed") || m.contains("forward")) {
            how.add("it replaced or patched module forward methods (e.g. an inference pipeline patching attention)");
        }
        if (m.contains("rng")) {
            how.add("it reseeded or advanced the global RNG (the training data order and dropout changed)");
        }
        if (m.contains("parameters changed")) {
            how.add("it changed parameter values");
        }
        if (m.contains("dtype/device")) {
            how.add("it changed dtype, device or train/eval mode");
        }
        causes.add(new RootCauseReport.Cause("VALIDATION_SIDE_EFFECT",
                "validation changed the training model: " + (how.isEmpty() ? "see the audit" : String.join("; ", how)),
                mutations.size() + " validation audit(s) found side effects, first at step " + first.step() + ": "
                        + first.message(),
                "run validation on a copy of the model (copy.deepcopy) or undo the pipeline's patches and RNG "
                        + "reseeding after it; keep `with guard.validation(model)` so trainguard restores the model"));
    }

    /** Pre-flight findings (fp16 without master weights, eps underflow...) are causes of numeric faults. */
    private static void preflight(Incident incident, Evidence ev, List<RootCauseReport.Cause> causes, List<String> checked,
                                  boolean fault) {
        checked.add("pre-flight precision audit");
        if (!fault && incident.kind() != IncidentKind.PREFLIGHT) {
            return;
        }
        List<Incident> findings = incident.kind() == IncidentKind.PREFLIGHT ? List.of(incident)
                : ev.runIncidents().stream().filter(x -> x.kind() == IncidentKind.PREFLIGHT).toList();
        Set<String> seen = new java.util.HashSet<>();
        for (Incident f : findings) {
            Matcher mm = FINDING.matcher(f.message());
            String code = mm.matches() ? mm.group(1) : "PREFLIGHT";
            String text = mm.matches() ? mm.group(2) : f.message();
            if (!seen.add(code)) {
                continue;
            }
            int cut = text.indexOf(". ");
            String title = cut > 0 ? text.substring(0, cut) : text;
            String fix = cut > 0 ? text.substring(cut + 2) : "see the finding";
            causes.add(new RootCauseReport.Cause(code, title, "pre-flight audit at OpenRun (" + f.severity() + "): "
                    + text, fix));
        }
    }

    private static double median(double[] v) {
        double[] s = Arrays.stream(v).filter(Double::isFinite).sorted().toArray();
        return s.length == 0 ? Double.NaN : s[s.length / 2];
    }

    private static double[] column(List<double[]> rows, int col, int from, int to) {
        return rows.subList(Math.max(0, from), Math.max(0, Math.min(rows.size(), to))).stream().mapToDouble(r -> r[col]).toArray();
    }

    private static void gradNormGrowth(Evidence ev, List<RootCauseReport.Cause> causes, List<String> checked) {
        checked.add("grad-norm trend before the fault");
        List<double[]> t = ev.trend();
        if (t.size() < RECENT * 2) {
            return;
        }
        double recent = median(column(t, 2, t.size() - RECENT, t.size()));
        double before = median(column(t, 2, 0, t.size() - RECENT));
        if (before > 0 && recent / before >= GROWTH) {
            causes.add(new RootCauseReport.Cause("GRAD_NORM_GROWTH",
                    String.format(Locale.ROOT, "the gradient norm grew %.1fx before the fault", recent / before),
                    String.format(Locale.ROOT, "median grad norm %.3g over the last %d steps vs %.3g over the %d before",
                            recent, RECENT, before, t.size() - RECENT),
                    "lower the learning rate or clip gradients (policy clip_mode=ZSCORE or a fixed clip_threshold); "
                            + "check for a layer whose activations grow (missing normalization)"));
        }
    }

    private static void lossScaleCollapse(Evidence ev, List<RootCauseReport.Cause> causes, List<String> checked) {
        checked.add("loss-scale trend");
        double[] scales = ev.trend().stream().mapToDouble(r -> r[4]).filter(x -> Double.isFinite(x) && x > 0).toArray();
        if (scales.length < 2) {
            return;
        }
        double max = Arrays.stream(scales).max().orElse(0);
        double last = scales[scales.length - 1];
        if (max / last >= 16) {
            causes.add(new RootCauseReport.Cause("LOSS_SCALE_COLLAPSE",
                    String.format(Locale.ROOT, "the fp16 loss scale collapsed from %.0f to %.3g", max, last),
                    "the GradScaler halved the scale on repeated overflows before the fault",
                    "fp16 overflows every step: train in bf16, or find the op that overflows (attention logits, "
                            + "exp/softmax without max-subtraction) and run it in fp32"));
        }
    }

    private static void warmupEnd(Evidence ev, List<RootCauseReport.Cause> causes, List<String> checked) {
        checked.add("learning-rate schedule (warm-up end)");
        List<double[]> t = ev.trend();
        double[] lr = t.stream().mapToDouble(r -> r[3]).toArray();
        if (lr.length < 4 || !Double.isFinite(lr[0])) {
            return;
        }
        double peak = Arrays.stream(lr).filter(Double::isFinite).max().orElse(Double.NaN);
        int peakAt = -1;
        for (int i = 0; i < lr.length; i++) {
            if (lr[i] == peak) {
                peakAt = i;
                break;
            }
        }
        boolean rose = lr[0] < peak * 0.5;
        int stepsSincePeak = lr.length - 1 - peakAt;
        if (rose && peakAt > 0 && stepsSincePeak <= Math.max(50, lr.length / 4)) {
            causes.add(new RootCauseReport.Cause("LR_WARMUP_END",
                    String.format(Locale.ROOT, "the fault came %d steps after the learning-rate warm-up reached its peak %.3g",
                            stepsSincePeak, peak),
                    String.format(Locale.ROOT, "LR rose from %.3g to %.3g (reached at step %d)", lr[0], peak,
                            (long) t.get(peakAt)[0]),
                    "the peak learning rate is too high for this model: lower it or lengthen the warm-up"));
        }
    }

    private static void crossRank(Incident incident, Evidence ev, List<RootCauseReport.Cause> causes, List<String> checked) {
        checked.add("cross-rank agreement");
        ev.runIncidents().stream().filter(x -> x.kind() == IncidentKind.CROSS_RANK_MISMATCH
                        && Math.abs(x.step() - incident.step()) <= 1).findFirst()
                .ifPresent(x -> causes.add(new RootCauseReport.Cause("CROSS_RANK_DISAGREEMENT",
                        "ranks disagree on values that must be identical (possible silent data corruption)",
                        "step " + x.step() + ": " + x.message(),
                        "move the rank named there off its GPU/node and rerun the step; if it repeats on healthy "
                                + "hardware, look for a non-deterministic or rank-dependent op")));
    }

    private static void repeatedAtSameStep(Incident incident, Evidence ev, List<RootCauseReport.Cause> causes,
                                           List<String> checked) {
        checked.add("repeated faults at the same data position");
        Set<IncidentKind> numeric = EnumSet.of(IncidentKind.NON_FINITE_LOSS, IncidentKind.NON_FINITE_GRAD,
                IncidentKind.NON_FINITE_MODULE, IncidentKind.LOSS_SPIKE, IncidentKind.GRAD_SPIKE);
        List<Incident> same = ev.runIncidents().stream().filter(x -> numeric.contains(x.kind()) && x.step() == incident.step()).toList();
        boolean replayed = ev.runIncidents().stream().anyMatch(x -> x.kind() == IncidentKind.ROLLBACK
                && x.step() >= incident.step());
        long distinctTimes = same.stream().map(Incident::time).distinct().count();
        if (same.size() >= 2 && replayed && distinctTimes >= 2) {
            causes.add(new RootCauseReport.Cause("BAD_BATCH",
                    "the same step fails again after a rollback replayed it: the batch itself is bad",
                    same.size() + " numeric incidents at step " + incident.step() + " across a rollback"
                            + (ev.dataPosition() >= 0 ? " (data position " + ev.dataPosition() + ")" : ""),
                    "skip that batch on rollback (policy rollback_skip_batches >= 1) and inspect the samples at that "
                            + "data position for corrupt or extreme inputs"));
        }
    }
}
