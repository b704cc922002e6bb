package io.trainguard.guard.detect;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.AuditFinding;
import io.trainguard.guard.model.DType;
import io.trainguard.guard.model.ParameterGroup;
import io.trainguard.guard.model.PrecisionSetup;
import io.trainguard.guard.model.Severity;
import java.util.List;
import org.junit.jupiter.api.Test;

class PreflightAuditTest {
    private final PreflightAudit audit = new PreflightAudit();

    private static List<String> codes(List<AuditFinding> findings) {
        return findings.stream().map(AuditFinding::code).toList();
    }

    @Test
    void audit_halloPureFp16AdamW_findsMasterWeightsAndEpsErrors() {
        // Hallo bug B: fp16 weights, AdamW eps=1e-8, no master copy, no loss scaling.
        var setup = new PrecisionSetup(DType.FLOAT16, DType.UNKNOWN, "AdamW", 1e-8, false, false, false, false, "torch", List.of());
        var findings = audit.audit(setup, List.of(new ParameterGroup("imageproj", 1000, DType.FLOAT16, true, false)));
        assertTrue(codes(findings).containsAll(List.of("FP16_WITHOUT_MASTER_WEIGHTS", "EPS_UNDERFLOW", "FP16_WITHOUT_LOSS_SCALING")),
                codes(findings).toString());
        assertTrue(findings.stream().anyMatch(f -> f.severity() == Severity.ERROR && f.message().contains("is 0 in FLOAT16")));
    }

    @Test
    void audit_fp32WeightsWithFp16AutocastAndScaler_isClean() {
        var setup = new PrecisionSetup(DType.FLOAT32, DType.FLOAT16, "AdamW", 1e-8, true, false, true, true, "torch", List.of());
        assertEquals(List.of(), audit.audit(setup, List.of(new ParameterGroup("all", 10, DType.FLOAT32, true, false))));
    }

    @Test
    void audit_deepspeedClippingNotEffective_saysWhereToSetIt() {
        var setup = new PrecisionSetup(DType.BFLOAT16, DType.UNKNOWN, "AdamW", 1e-8, false, true, true, false, "deepspeed", List.of());
        var findings = audit.audit(setup, List.of());
        assertEquals(List.of("CLIPPING_NOT_EFFECTIVE"), codes(findings));
        assertTrue(findings.get(0).message().contains("gradient_clipping"));
    }

    @Test
    void audit_fp16AndBf16Mixed_warns() {
        var setup = new PrecisionSetup(DType.UNKNOWN, DType.UNKNOWN, "SGD", 0, true, true, false, false, "torch", List.of());
        var findings = audit.audit(setup, List.of(new ParameterGroup("a", 1, DType.FLOAT16, true, true),
                new ParameterGroup("b", 1, DType.BFLOAT16, true, true)));
        assertTrue(codes(findings).contains("MIXED_HALF_PRECISION"), codes(findings).toString());
    }
}
