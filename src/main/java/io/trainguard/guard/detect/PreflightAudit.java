package io.trainguard.guard.detect;

import io.trainguard.guard.model.AuditFinding;
import io.trainguard.guard.model.DType;
import io.trainguard.guard.model.ParameterGroup;
import io.trainguard.guard.model.PrecisionSetup;
import io.trainguard.guard.model.Severity;
import java.util.ArrayList;
import java.util.EnumSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;

/**
 * Checks a rank's precision setup before step 1. Hallo's bug B (pure-fp16 AdamW, eps=1e-8, no
 * master weights) is two ERROR findings here, found before a single update is made.
 */
public final class PreflightAudit {

    public List<AuditFinding> audit(PrecisionSetup setup, List<ParameterGroup> groups) {
        List<AuditFinding> findings = new ArrayList<>();
        Set<DType> trainableDtypes = EnumSet.noneOf(DType.class);
        boolean halfWithoutMaster = false;
        for (ParameterGroup g : groups) {
            if (g.trainable() && g.dtype() != DType.UNKNOWN) {
                trainableDtypes.add(g.dtype());
                halfWithoutMaster |= g.dtype().isHalf() && !g.hasMasterCopy() && !setup.masterWeights();
            }
        }
        if (setup.parameterDtype() != DType.UNKNOWN) {
            trainableDtypes.add(setup.parameterDtype());
            halfWithoutMaster |= setup.parameterDtype() == DType.FLOAT16 && !setup.masterWeights();
        }
        boolean fp16Params = trainableDtypes.contains(DType.FLOAT16);
        if (fp16Params && halfWithoutMaster) {
            findings.add(new AuditFinding("FP16_WITHOUT_MASTER_WEIGHTS", Severity.ERROR,
                    "trainable parameters are stored in fp16 with no fp32 master copy: small updates round away and the "
                            + "optimizer state under/overflows. Keep the weights in fp32 and train with "
                            + "torch.autocast(dtype=torch.float16) + GradScaler, use bf16 autocast, or use a framework "
                            + "that keeps fp32 master weights (DeepSpeed ZeRO, Apex O2)."));
        }
        eps(setup, trainableDtypes).ifPresent(findings::add);
        boolean fp16Compute = fp16Params || setup.autocastDtype() == DType.FLOAT16;
        if (fp16Compute && !setup.lossScaler()) {
            findings.add(new AuditFinding("FP16_WITHOUT_LOSS_SCALING", Severity.WARNING,
                    "fp16 gradients are computed without loss scaling: small gradients underflow to zero and large ones "
                            + "overflow. Use torch.amp.GradScaler (or DeepSpeed's dynamic loss scale), or switch to bf16."));
        }
        if (setup.clippingConfigured() && !setup.clippingEffective()) {
            String hint = setup.framework().toLowerCase(Locale.ROOT).contains("deepspeed")
                    ? " Under DeepSpeed, accelerator.clip_grad_norm_ does nothing unless the DeepSpeed config sets "
                            + "\"gradient_clipping\"; set it there."
                    : " Make sure the clipping call runs on the gradients the optimizer actually applies.";
            findings.add(new AuditFinding("CLIPPING_NOT_EFFECTIVE", Severity.ERROR,
                    "gradient clipping is configured but is not applied to the update." + hint));
        }
        boolean mixedHalves = trainableDtypes.contains(DType.FLOAT16) && trainableDtypes.contains(DType.BFLOAT16);
        boolean autocastMismatch = setup.autocastDtype().isHalf() && trainableDtypes.stream()
                .anyMatch(d -> d.isHalf() && d != setup.autocastDtype());
        if (mixedHalves || autocastMismatch) {
            findings.add(new AuditFinding("MIXED_HALF_PRECISION", Severity.WARNING,
                    "fp16 and bf16 are mixed (trainable dtypes " + trainableDtypes + ", autocast "
                            + setup.autocastDtype() + "): fp16 parts overflow where bf16 parts do not. Use one half "
                            + "precision type throughout."));
        }
        return findings;
    }

    /** The dtype the optimizer's moments live in decides whether eps survives at all. */
    private java.util.Optional<AuditFinding> eps(PrecisionSetup setup, Set<DType> trainableDtypes) {
        double eps = setup.optimizerEps();
        if (eps <= 0) {
            return java.util.Optional.empty();
        }
        DType stateDtype;
        if (!setup.optimizerStateDtypes().isEmpty()) {
            stateDtype = setup.optimizerStateDtypes().stream().filter(DType::isHalf).findFirst()
                    .orElse(setup.optimizerStateDtypes().get(0));
        } else if (setup.masterWeights()) {
            stateDtype = DType.FLOAT32;
        } else {
            stateDtype = trainableDtypes.stream().filter(DType::isHalf).findFirst().orElse(DType.FLOAT32);
        }
        if (!stateDtype.isFloat()) {
            return java.util.Optional.empty();
        }
        String opt = setup.optimizerName().isEmpty() ? "the optimizer" : setup.optimizerName();
        if (eps < stateDtype.smallestSubnormal() / 2) {
            return java.util.Optional.of(new AuditFinding("EPS_UNDERFLOW", Severity.ERROR,
                    opt + " eps=" + eps + " is 0 in " + stateDtype + " (smallest positive value "
                            + stateDtype.smallestSubnormal() + "): the first update divides by zero. Keep optimizer "
                            + "state in fp32 (fp32 master weights) or raise eps to at least " + stateDtype.smallestNormal() + "."));
        }
        if (eps < stateDtype.smallestNormal()) {
            return java.util.Optional.of(new AuditFinding("EPS_SUBNORMAL", Severity.WARNING,
                    opt + " eps=" + eps + " is subnormal in " + stateDtype + ": it keeps only a few bits of precision. "
                            + "Keep optimizer state in fp32 or raise eps to at least " + stateDtype.smallestNormal() + "."));
        }
        return java.util.Optional.empty();
    }
}
