package io.trainguard.checkpoint;

import io.trainguard.guard.CheckpointCatalog;
import io.trainguard.guard.JournalRow;
import java.util.List;
import java.util.Optional;

/** The engine's view of the registry: only KNOWN_GOOD checkpoints are rollback targets. */
public final class RegistryCatalog implements CheckpointCatalog {
    private final CheckpointRegistry registry;

    public RegistryCatalog(CheckpointRegistry registry) {
        this.registry = registry;
    }

    @Override
    public Optional<RollbackTarget> newestKnownGood(String runId) {
        return registry.newestKnownGood(runId).map(RegistryCatalog::target);
    }

    @Override
    public Optional<RollbackTarget> newestKnownGoodBefore(String runId, long step) {
        return registry.newestKnownGoodBefore(runId, step).map(RegistryCatalog::target);
    }

    private static RollbackTarget target(CheckpointRecord c) {
        return new RollbackTarget(c.id(), c.step(), c.files().stream().map(CheckpointFileSpec::path).toList(),
                c.dataPosition());
    }

    @Override
    public Optional<PendingTarget> newestPending(String runId) {
        // the published record's healthy count lags (counts are kept without republishing): read it afresh
        return registry.newestPending(runId).map(c -> registry.get(c.id())).map(c -> new PendingTarget(c.id(), c.step(),
                c.state().name(), c.healthyStepsSince(), registry.healthyStepsRequired(runId)));
    }

    @Override
    public List<JournalRow> onHealthyStep(String runId, long step) {
        return rows(registry.countStep(runId, step, true));
    }

    @Override
    public List<JournalRow> onUnhealthyStep(String runId, long step) {
        return rows(registry.countStep(runId, step, false));
    }

    private static List<JournalRow> rows(List<CheckpointRecord> changed) {
        return changed.isEmpty() ? List.of() : changed.stream().map(JournaledCheckpointStore::row).toList();
    }

    @Override
    public void trainerRestarted(String runId, int rank, String trainerInstance) {
        registry.evictOtherProcesses(runId, rank, trainerInstance);
    }

    @Override
    public void unrestorable(String runId, String checkpointId, String reason) {
        registry.unrestorable(runId, checkpointId, reason);
    }

    @Override
    public void configure(String runId, int knownGoodHealthySteps) {
        registry.setHealthyStepsRequired(runId, knownGoodHealthySteps);
    }
}
