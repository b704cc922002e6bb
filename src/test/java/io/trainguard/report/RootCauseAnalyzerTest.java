package io.trainguard.report;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.Severity;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class RootCauseAnalyzerTest {
    private final RootCauseAnalyzer analyzer = new RootCauseAnalyzer();
    private static final Instant T = Instant.parse("2026-11-29T10:00:00Z");

    private static Incident incident(long id, long step, IncidentKind kind, String message, String module, Instant t) {
        return new Incident(id, "r", 0, step, kind, Severity.ERROR, message, module, t);
    }

    private static List<String> codes(RootCauseReport r) {
        return r.likelyCauses().stream().map(RootCauseReport.Cause::code).toList();
    }

    private static List<double[]> flat(int n, double grad, double lr) {
        List<double[]> t = new ArrayList<>();
        for (int s = 0; s < n; s++) {
            t.add(new double[] {s, 2.0, grad, lr, Double.NaN});
        }
        return t;
    }

    @Test
    void analyze_nonFiniteAfterFp16PreflightFindings_namesMasterWeightsAndEps() {
        // prevents: a report for the fp16 Hallo bug that names the module but not why it blew up
        Incident fault = incident(3, 0, IncidentKind.TENSOR_FORENSICS, "imageproj.proj.weight: 3 NaN", "imageproj", T);
        List<Incident> all = List.of(
                incident(1, -1, IncidentKind.PREFLIGHT, "[FP16_WITHOUT_MASTER_WEIGHTS] trainable parameters are stored in fp16 "
                        + "with no fp32 master copy: small updates round away. Keep the weights in fp32.", "", T),
                incident(2, -1, IncidentKind.PREFLIGHT, "[EPS_UNDERFLOW] AdamW eps=1.0E-8 is 0 in FLOAT16 (smallest positive "
                        + "value 6e-8): the first update divides by zero. Keep optimizer state in fp32 or raise eps.", "", T),
                fault);
        RootCauseReport r = analyzer.analyze(fault, new Evidence(null, all, List.of(), -1));
        assertEquals(List.of("FP16_WITHOUT_MASTER_WEIGHTS", "EPS_UNDERFLOW"), codes(r));
        assertTrue(r.likelyCauses().get(1).fix().contains("raise eps"));
        assertTrue(r.where().description().contains("imageproj"));
    }

    @Test
    void analyze_validationMutation_namesPatchedForwardAndRng() {
        // prevents: the validation Hallo bug reported as "model changed" without saying how
        Incident v = incident(5, 5, IncidentKind.VALIDATION_MUTATION, "validation at step 5 left the training model changed: "
                + "module wiring changed (forward replaced or patched), RNG state changed (blocks.0.attn.forward replaced)", "", T);
        RootCauseReport r = analyzer.analyze(v, new Evidence(null, List.of(v), List.of(), -1));
        assertEquals(List.of("VALIDATION_SIDE_EFFECT"), codes(r));
        String title = r.likelyCauses().get(0).title();
        assertTrue(title.contains("forward") && title.contains("RNG"), title);
    }

    @Test
    void analyze_gradNormGrewAfterWarmup_namesGrowthAndWarmupEnd() {
        // prevents: a divergence report that ignores the trend visible in the journal
        List<double[]> t = new ArrayList<>();
        for (int s = 0; s < 60; s++) {
            double lr = s < 40 ? 1e-3 * (s + 1) / 40 : 1e-3;
            t.add(new double[] {s, 2.0, s < 50 ? 1.0 : 10.0, lr, Double.NaN});
        }
        Incident fault = incident(9, 60, IncidentKind.NON_FINITE_LOSS, "loss is NaN", "", T);
        RootCauseReport r = analyzer.analyze(fault, new Evidence(null, List.of(fault), t, -1));
        assertTrue(codes(r).contains("GRAD_NORM_GROWTH"), codes(r).toString());
        assertTrue(codes(r).contains("LR_WARMUP_END"), codes(r).toString());
    }

    @Test
    void analyze_sameStepFailsAgainAfterRollback_namesBadBatch() {
        // prevents: rolling back into the same bad batch forever without saying so
        Incident first = incident(1, 30, IncidentKind.NON_FINITE_LOSS, "loss is NaN", "", T);
        Incident rollback = incident(2, 32, IncidentKind.ROLLBACK, "rollback to step 20", "", T.plusSeconds(1));
        Incident again = incident(3, 30, IncidentKind.NON_FINITE_LOSS, "loss is NaN", "", T.plusSeconds(5));
        RootCauseReport r = analyzer.analyze(again, new Evidence(null, List.of(first, rollback, again), flat(30, 1, 1e-3), 640));
        assertTrue(codes(r).contains("BAD_BATCH"), codes(r).toString());
        assertEquals(640, r.where().dataPosition());
    }

    @Test
    void analyze_healthyTrendNoFindings_saysNoEvidenceInsteadOfGuessing() {
        // prevents: a report inventing a cause it cannot point at
        Incident fault = incident(1, 30, IncidentKind.NON_FINITE_LOSS, "loss is NaN", "", T);
        RootCauseReport r = analyzer.analyze(fault, new Evidence(null, List.of(fault), flat(30, 1, 1e-3), -1));
        assertEquals(List.of("NO_EVIDENCE"), codes(r));
    }
}
