package io.trainguard.guard.model;

import java.util.List;

/** How the trainer stores weights and runs its optimizer; what the pre-flight audit checks. */
public record PrecisionSetup(
        DType parameterDtype,
        DType autocastDtype,
        String optimizerName,
        double optimizerEps,
        boolean lossScaler,
        boolean masterWeights,
        boolean clippingConfigured,
        boolean clippingEffective,
        String framework,
        List<DType> optimizerStateDtypes) {

    public static PrecisionSetup unknown() {
        return new PrecisionSetup(DType.UNKNOWN, DType.UNKNOWN, "", 0, false, false, false, false, "", List.of());
    }
}
