package io.trainguard.checkpoint;

import io.trainguard.guard.CheckpointCatalog;
import java.util.Optional;

/** The engine's view of the registry: only KNOWN_GOOD checkpoints are rollback targets. */
public final class RegistryCatalog implements CheckpointCatalog {
    private final CheckpointRegistry registry;

    public RegistryCatalog(CheckpointRegistry registry) {
        this.registry = registry;
    }

    @Override
    public Optional<RollbackTarget> newestKnownGood(String runId) {
        return registry.newestKnownGood(runId).map(c -> new RollbackTarget(c.id(), c.step(),
                c.files().stream().map(CheckpointFileSpec::path).toList(), c.dataPosition()));
    }

    @Override
    public void onHealthyStep(String runId, long step) {
        registry.onHealthyStep(runId, step);
    }

    @Override
    public void onUnhealthyStep(String runId, long step) {
        registry.onUnhealthyStep(runId, step);
    }

    @Override
    public void configure(String runId, int knownGoodHealthySteps) {
        registry.setHealthyStepsRequired(runId, knownGoodHealthySteps);
    }
}
