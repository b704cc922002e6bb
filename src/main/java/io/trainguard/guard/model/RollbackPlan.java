package io.trainguard.guard.model;

import java.util.List;

/** PaLM's recipe, automated: restore a known-good checkpoint, skip the batches that led into trouble, cut and re-warm the LR. */
public record RollbackPlan(
        String checkpointId,
        long checkpointStep,
        List<String> files,
        long dataPosition,
        long skipBatches,
        double lrFactor,
        long rewarmSteps,
        int attempt,
        long triggerStep) {
}
