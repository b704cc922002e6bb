package io.trainguard.store;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.CheckpointCatalog;
import io.trainguard.guard.model.ClipMode;
import io.trainguard.guard.GuardEvents;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.JournalRow;
import io.trainguard.guard.policy.Policy;
import io.trainguard.guard.model.PrecisionSetup;
import io.trainguard.guard.model.RunSetup;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.StepReport;
import java.nio.file.Path;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import java.util.List;
import java.util.Optional;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The journal stays bounded over months of runs, and a restart does not pay per rank of the world size. */
class JournalRetentionAndReplayTest {
    @TempDir
    Path dir;

    static final CheckpointCatalog NO_CHECKPOINTS = new CheckpointCatalog() {
        @Override
        public Optional<RollbackTarget> newestKnownGood(String runId) {
            return Optional.empty();
        }

        @Override
        public List<JournalRow> onHealthyStep(String runId, long step) {
            return List.of();
        }

        @Override
        public List<JournalRow> onUnhealthyStep(String runId, long step) {
            return List.of();
        }
    };

    static Policy policy() {
        return new Policy(ClipMode.FIXED, 1.0, 3, 10, 5, 6.0, 0.98, 20, Action.SKIP, 2.5, 0.97, 10, 5, 0, 0.5, 100, 2,
                1000, AuditMode.OFF, 5.0, Duration.ofSeconds(1), Duration.ofSeconds(60), 1e-6, 10, 2.0, 5);
    }

    static GuardedRuns service(SqliteJournal journal, Instant now) {
        return new GuardedRuns(journal, NO_CHECKPOINTS, GuardEvents.NONE, policy(), Clock.fixed(now, ZoneOffset.UTC),
                System::nanoTime, Duration.ofSeconds(5));
    }

    static RunSetup setup(String run, int rank, int world) {
        return new RunSetup(run, rank, world, null, List.of(), List.of(), PrecisionSetup.unknown(), "t");
    }

    static StepReport step(String run, int rank, long step) {
        return new StepReport(run, rank, step, 2.0, false, 0.5, new double[0], 1e-3, 0, List.of(), new boolean[0],
                new double[0], Duration.ZERO, false);
    }

    // Prevents: closed runs kept forever, so the journal and the start time grow without bound.
    @Test
    void expireClosedRuns_oldClosedRunsGone_openAndRecentOnesKept() {
        Instant longAgo = Instant.parse("2026-01-01T00:00:00Z");
        Instant recently = Instant.parse("2026-11-28T00:00:00Z");
        try (SqliteJournal journal = new SqliteJournal(dir.resolve("j.db"), "NORMAL", 1024)) {
            GuardedRuns old = service(journal, longAgo);
            for (String run : List.of("old-closed", "old-open")) {
                old.open(setup(run, 0, 1));
                old.report(step(run, 0, 0));
            }
            old.close("old-closed", 0, "done");
            GuardedRuns recent = service(journal, recently);
            recent.open(setup("new-closed", 0, 1));
            recent.close("new-closed", 0, "done");
            assertEquals(1, journal.expireClosedRuns(Instant.parse("2026-10-30T00:00:00Z")));
            assertEquals(List.of("old-open", "new-closed"), journal.loadRuns().stream().map(RunSnapshot::runId).toList());
            assertTrue(journal.recentSteps("old-closed", 0, 10).isEmpty());
            assertTrue(journal.incidents("old-closed", 10).isEmpty());
            assertEquals(1, journal.recentSteps("old-open", 0, 10).size());
        }
    }

    // Prevents: a run opened with world_size 2^20 costing one query and one rank state per rank at
    // every start (3.1 s -> 27.7 s and 1.37 GB RSS).
    @Test
    void recentStepsByRank_hugeWorldTwoRanksReported_onlyThoseRanksOneQuery() {
        int world = 1 << 20;
        try (SqliteJournal journal = new SqliteJournal(dir.resolve("w.db"), "NORMAL", 1024)) {
            GuardedRuns guard = service(journal, Instant.parse("2026-11-28T00:00:00Z"));
            guard.open(setup("huge", 0, world));
            guard.open(setup("huge", world - 1, world));
            for (long s = 0; s < 40; s++) {
                guard.report(step("huge", 0, s));
                guard.report(step("huge", world - 1, s));
            }
            journal.write(io.trainguard.guard.JournalWrite.rows(List.of())).join(); // the writes before it are committed
            var byRank = journal.recentStepsByRank("huge", world, 32);
            assertEquals(List.of(0, world - 1), List.copyOf(byRank.keySet()));
            assertEquals(32, byRank.get(0).size());
            assertEquals(8, byRank.get(0).get(0).step(), "oldest first, the newest 32 of 40");
            GuardedRuns restarted = service(journal, Instant.parse("2026-11-28T00:00:00Z"));
            assertEquals(1, restarted.restore(32));
            assertEquals(io.trainguard.guard.model.Action.APPLY, restarted.report(step("huge", 0, 40)).action());
        }
    }

    // Prevents: a restart counting a GradScaler's overflows (no incident) into a skip streak, or
    // forgetting the detectors' skips (a step-fault incident each), when the journal is SQLite.
    @Test
    void incidentStepsByRank_stepFaultsOnly_byRank() {
        try (SqliteJournal journal = new SqliteJournal(dir.resolve("f.db"), "NORMAL", 1024)) {
            GuardedRuns guard = service(journal, Instant.parse("2026-11-28T00:00:00Z"));
            guard.open(setup("faults", 0, 2));
            guard.open(setup("faults", 1, 2));
            guard.report(step("faults", 0, 0));
            guard.report(new StepReport("faults", 1, 0, Double.NaN, false, 0.5, new double[0], 1e-3, 0, List.of(),
                    new boolean[0], new double[0], Duration.ZERO, false));
            guard.report(new StepReport("faults", 0, 1, 2.0, false, Double.POSITIVE_INFINITY, new double[0], 1e-3, 1024,
                    List.of(), new boolean[0], new double[0], Duration.ZERO, false)); // the scaler's own overflow
            RunSnapshot view = guard.run("faults").snapshot();
            assertEquals(1, view.consecutiveSkips());
            var faults = journal.incidentStepsByRank("faults", io.trainguard.guard.model.IncidentKind.STEP_FAULTS, 0L);
            assertEquals(java.util.Map.of(1, java.util.Set.of(0L)), faults);
            GuardedRuns restarted = service(journal, Instant.parse("2026-11-28T00:00:00Z"));
            assertEquals(1, restarted.restore(32));
            assertEquals(1, restarted.run("faults").snapshot().consecutiveSkips());
        }
    }

    // Prevents: the restart's fault lookup being cut by a count (several incidents on one step, spikes
    // that only clipped) instead of by the replayed steps.
    @Test
    void incidentStepsByRank_fromStep_returnsEveryFaultFromThatStepOn() {
        try (SqliteJournal journal = new SqliteJournal(dir.resolve("g.db"), "NORMAL", 1024)) {
            GuardedRuns guard = service(journal, Instant.parse("2026-11-28T00:00:00Z"));
            guard.open(setup("from", 0, 1));
            for (long s = 0; s < 3; s++) {
                guard.report(new StepReport("from", 0, s, Double.NaN, false, 0.5, new double[0], 1e-3, 0, List.of(),
                        new boolean[0], new double[0], Duration.ZERO, false));
            }
            assertEquals(java.util.Map.of(0, java.util.Set.of(1L, 2L)),
                    journal.incidentStepsByRank("from", io.trainguard.guard.model.IncidentKind.STEP_FAULTS, 1L));
        }
    }
}
