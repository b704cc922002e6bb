package io.trainguard.guard;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.model.ClipMode;
import io.trainguard.guard.model.PrecisionSetup;
import io.trainguard.guard.model.RunSetup;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.policy.Policy;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.util.List;
import java.util.Optional;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.UnaryOperator;

/** Builders shared by the engine tests. */
final class Fixtures {
    private Fixtures() {
    }

    static Policy defaults() {
        return new Policy(ClipMode.FIXED, 1.0, 3, 10, 5, 6.0, 0.98, 20, Action.SKIP, 2.5, 0.97, 10, 5, 0, 0.5, 100, 2,
                1000, AuditMode.REFUSE, 5.0, Duration.ofSeconds(1), Duration.ofSeconds(60), 1e-6, 10, 2.0, 5);
    }

    static final class Checkpoints implements CheckpointCatalog {
        RollbackTarget knownGood;
        RollbackTarget older;  // what newestKnownGoodBefore finds below knownGood
        PendingTarget pending;
        int healthy;
        int unhealthy;

        @Override
        public Optional<RollbackTarget> newestKnownGood(String runId) {
            return Optional.ofNullable(knownGood);
        }

        @Override
        public Optional<RollbackTarget> newestKnownGoodBefore(String runId, long step) {
            return Optional.ofNullable(knownGood != null && knownGood.step() < step ? knownGood
                    : older != null && older.step() < step ? older : null);
        }

        @Override
        public Optional<PendingTarget> newestPending(String runId) {
            return Optional.ofNullable(pending);
        }

        @Override
        public void unrestorable(String runId, String checkpointId, String reason) {
            if (knownGood != null && knownGood.checkpointId().equals(checkpointId)) {
                knownGood = older;
                older = null;
            }
        }

        @Override
        public List<JournalRow> onHealthyStep(String runId, long step) {
            healthy++;
            return List.of();
        }

        @Override
        public List<JournalRow> onUnhealthyStep(String runId, long step) {
            unhealthy++;
            return List.of();
        }
    }

    static final AtomicLong NANOS = new AtomicLong(1_000_000_000L);

    static GuardedRuns service(InMemoryJournal journal, CheckpointCatalog checkpoints) {
        return new GuardedRuns(journal, checkpoints, GuardEvents.NONE, defaults(),
                Clock.fixed(Instant.parse("2026-11-27T00:00:00Z"), ZoneOffset.UTC), NANOS::get, Duration.ofSeconds(1));
    }

    static RunSetup setup(String runId, int rank, int worldSize, UnaryOperator<Policy.Builder> overrides) {
        return new RunSetup(runId, rank, worldSize, overrides, List.of(), List.of("embed", "block0", "block1", "head"),
                PrecisionSetup.unknown(), "trainer-1");
    }

    static StepReport step(String runId, int rank, long step, double loss, double gradNorm) {
        return new StepReport(runId, rank, step, loss, false, gradNorm, new double[0], 1e-3, 0, List.of(),
                new boolean[0], new double[0], Duration.ZERO, false);
    }

    static StepReport stepWithModules(String runId, long step, double loss, double gradNorm, boolean[] finite) {
        return new StepReport(runId, 0, step, loss, false, gradNorm, new double[0], 1e-3, 0, List.of(), finite,
                new double[0], Duration.ZERO, false);
    }
}
