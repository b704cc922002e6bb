package io.trainguard.guard;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.Phase;
import io.trainguard.guard.model.RunState;
import java.util.List;
import org.junit.jupiter.api.Test;

class HangDetectionTest {
    @Test
    void recordHangs_silentRankAfterLearnedSteps_journalsOneHangIncident() {
        // A hung trainer must turn the trainer health group DOWN once, not spam the journal.
        InMemoryJournal journal = new InMemoryJournal();
        GuardedRuns guard = Fixtures.service(journal, new Fixtures.Checkpoints());
        HangSweep sweep = new HangSweep(guard, Fixtures.NANOS::get);
        guard.open(Fixtures.setup("hang", 0, 1, null));
        for (int s = 0; s < 20; s++) {
            Fixtures.NANOS.addAndGet(100_000_000L);
            guard.report(Fixtures.step("hang", 0, s, 2.0, 0.5));
        }
        Fixtures.NANOS.addAndGet(500_000_000L);
        assertTrue(sweep.recordHangs().isEmpty(), "half a second is within 5x the 0.1 s step (clamped to hang_min 1 s)");
        Fixtures.NANOS.addAndGet(2_000_000_000L);
        var hangs = sweep.recordHangs();
        assertEquals(1, hangs.size());
        assertEquals(19, hangs.get(0).lastStep());
        assertEquals(Phase.STEP, hangs.get(0).phase());
        sweep.recordHangs();
        assertEquals(1, journal.incidents.stream().filter(i -> i.kind() == IncidentKind.HANG).count());
        // Progress clears it.
        guard.report(Fixtures.step("hang", 0, 20, 2.0, 0.5));
        assertTrue(sweep.hangs().isEmpty());
    }

    @Test
    void aHungRankIsSettledWhenAnotherTrainerProcessOpensARun_underItsRunIdOrANewOne() {
        // prevents: a crashed trainer's run left open (as a restart needs) keeping the trainer health group
        // DOWN for good: the liveness probe then killed every new trainer, under a new run id or the same one
        InMemoryJournal journal = new InMemoryJournal();
        GuardedRuns guard = Fixtures.service(journal, new Fixtures.Checkpoints());
        HangSweep sweep = new HangSweep(guard, Fixtures.NANOS::get);
        for (String run : new String[] {"crashed-a", "crashed-b"}) {
            guard.open(Fixtures.setup(run, 0, 1, null));  // held by "trainer-1"
            for (int s = 0; s < 20; s++) {
                Fixtures.NANOS.addAndGet(100_000_000L);
                guard.report(Fixtures.step(run, 0, s, 2.0, 0.5));
            }
        }
        Fixtures.NANOS.addAndGet(3_000_000_000L);
        assertEquals(2, sweep.recordHangs().size(), "both runs' trainer stopped");
        var s = Fixtures.setup("crashed-a", 0, 1, null);
        guard.open(new io.trainguard.guard.model.RunSetup(s.runId(), s.rank(), s.worldSize(), s.policyOverrides(),
                s.parameterGroups(), s.watchedModules(), s.precision(), "trainer-2"));  // the same run id, restarted
        Fixtures.NANOS.addAndGet(3_000_000_000L);  // starting up: no report yet
        assertTrue(sweep.hangs().isEmpty(), "the restart settled both: " + sweep.hangs());
        assertTrue(journal.incidents.stream().anyMatch(i -> i.kind() == IncidentKind.RESUMED
                && i.message().contains("rank 0 of run 'crashed-b' was hung")), journal.incidents.toString());
        guard.report(Fixtures.step("crashed-a", 0, 20, 2.0, 0.5));
        Fixtures.NANOS.addAndGet(3_000_000_000L);
        assertEquals(List.of("crashed-a"), sweep.hangs().stream().map(h -> h.runId()).toList(),
                "the restarted trainer is judged again once it reports");
    }

    @Test
    void anOperatorClosesARunWhoseTrainerIsGone_itsHangStopsCountingAndTheRunIdIsRefusedAfter() {
        // prevents: no way for an operator to retire a crashed job's open run: its hang kept the trainer
        // health group DOWN until a trainer process opened a run on that sidecar
        InMemoryJournal journal = new InMemoryJournal();
        GuardedRuns guard = Fixtures.service(journal, new Fixtures.Checkpoints());
        HangSweep sweep = new HangSweep(guard, Fixtures.NANOS::get);
        guard.open(Fixtures.setup("gone", 0, 1, null));
        for (int s = 0; s < 20; s++) {
            Fixtures.NANOS.addAndGet(100_000_000L);
            guard.report(Fixtures.step("gone", 0, s, 2.0, 0.5));
        }
        Fixtures.NANOS.addAndGet(3_000_000_000L);
        assertEquals(1, sweep.hangs().size());
        assertThrows(InvalidRequestException.class, () -> guard.closeByOperator("gone", " "), "a reason is journaled");
        assertEquals(RunState.CLOSED, guard.closeByOperator("gone", "job deleted").state());
        assertTrue(sweep.hangs().isEmpty());
        assertTrue(journal.incidents.stream().anyMatch(i -> i.kind() == IncidentKind.CLOSED_BY_OPERATOR
                && i.message().contains("job deleted")), journal.incidents.toString());
        assertEquals(RunState.CLOSED, guard.closeByOperator("gone", "again").state(), "closing again changes nothing");
        assertThrows(PreconditionFailedException.class, () -> guard.open(Fixtures.setup("gone", 0, 1, null)));
    }

    @Test
    void hangs_validationPhase_judgedByItsOwnAllowanceNotTheStepTime() {
        // Validation takes far longer than a step; it must not be called a hang by step timing.
        InMemoryJournal journal = new InMemoryJournal();
        GuardedRuns guard = Fixtures.service(journal, new Fixtures.Checkpoints());
        HangSweep sweep = new HangSweep(guard, Fixtures.NANOS::get);
        guard.open(Fixtures.setup("val-hang", 0, 1, null));
        for (int s = 0; s < 20; s++) {
            Fixtures.NANOS.addAndGet(100_000_000L);
            guard.report(Fixtures.step("val-hang", 0, s, 2.0, 0.5));
        }
        guard.heartbeat("val-hang", 0, 19, Phase.VALIDATION);
        Fixtures.NANOS.addAndGet(30_000_000_000L);
        assertTrue(sweep.hangs().isEmpty(), "first validation gets hang_max (60 s in the fixture)");
    }

    // Prevents: a paused trainer (guard.pause(): eval, save, data-loader restart) reported hung
    // and restarted by its liveness probe; a trainer that really stops must still be reported.
    @Test
    void hangs_pausedForTenTimesTheMinimum_notHungButAStoppedTrainerIs() {
        InMemoryJournal journal = new InMemoryJournal();
        GuardedRuns guard = Fixtures.service(journal, new Fixtures.Checkpoints());
        HangSweep sweep = new HangSweep(guard, Fixtures.NANOS::get);
        guard.open(Fixtures.setup("pause-hang", 0, 1, null));
        for (int s = 0; s < 20; s++) {
            Fixtures.NANOS.addAndGet(100_000_000L);
            guard.report(Fixtures.step("pause-hang", 0, s, 2.0, 0.5));
        }
        guard.heartbeat("pause-hang", 0, 19, Phase.IDLE); // what guard.pause() sends
        Fixtures.NANOS.addAndGet(10_000_000_000L); // 10 x hang_min (1 s in the fixture)
        assertTrue(sweep.recordHangs().isEmpty(), "a paused trainer is not hung");
        guard.heartbeat("pause-hang", 0, 19, Phase.STEP); // guard.resume()
        for (int s = 20; s < 25; s++) {
            Fixtures.NANOS.addAndGet(100_000_000L);
            guard.report(Fixtures.step("pause-hang", 0, s, 2.0, 0.5));
        }
        Fixtures.NANOS.addAndGet(2_500_000_000L); // stopped: 2.5 s > max(1 s, 5 x 0.1 s, 2 x 0.1 s)
        assertEquals(1, sweep.recordHangs().size(), "a trainer that really stops is reported");
    }

    // Prevents: one long interval the guard was not told about (an evaluation in the step loop)
    // being a hang the next time it happens: whole intervals are learned, the longest one kept.
    @Test
    void hangs_longIntervalSeenBefore_allowedAgain() {
        InMemoryJournal journal = new InMemoryJournal();
        GuardedRuns guard = Fixtures.service(journal, new Fixtures.Checkpoints());
        HangSweep sweep = new HangSweep(guard, Fixtures.NANOS::get);
        guard.open(Fixtures.setup("long-interval", 0, 1, null));
        long step = 0;
        for (int round = 0; round < 2; round++) {
            for (int s = 0; s < 20; s++) {
                Fixtures.NANOS.addAndGet(100_000_000L);
                guard.report(Fixtures.step("long-interval", 0, step++, 2.0, 0.5));
            }
            Fixtures.NANOS.addAndGet(round == 0 ? 900_000_000L : 1_700_000_000L); // an eval: 0.9 s, then 1.7 s
            assertTrue(sweep.recordHangs().isEmpty(), "round " + round);
            guard.report(Fixtures.step("long-interval", 0, step++, 2.0, 0.5));
        }
    }
}
