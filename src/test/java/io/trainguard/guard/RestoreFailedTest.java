package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.model.Verdict;
import java.util.List;
import org.junit.jupiter.api.Test;

/**
 * A trainer that cannot restore the checkpoint its ROLLBACK named (files deleted or changed since they
 * were verified, a loader's error) says so: the run rolls back to the next older known-good checkpoint,
 * or halts, and the record says which. Before, the client halted on its own and the run stayed
 * ROLLING_BACK with the damaged checkpoint still KNOWN_GOOD.
 */
class RestoreFailedTest {
    private final InMemoryJournal journal = new InMemoryJournal();
    private final Fixtures.Checkpoints checkpoints = new Fixtures.Checkpoints();
    private final GuardedRuns guard = service(journal, checkpoints);

    private Verdict rollBackAt(String run, int world, long trigger) {
        guard.open(setup(run, 0, world, null));
        for (int r = 1; r < world; r++) {
            guard.open(setup(run, r, world, null));
        }
        checkpoints.knownGood = new CheckpointCatalog.RollbackTarget("ck-20", 20, List.of("/ck/20"), 20);
        checkpoints.older = new CheckpointCatalog.RollbackTarget("ck-10", 10, List.of("/ck/10"), 10);
        for (long s = 30; s < trigger; s++) {
            guard.report(step(run, 0, s, Double.NaN, 1));
        }
        Verdict v = guard.report(step(run, 0, trigger, Double.NaN, 1));
        assertEquals(Action.ROLLBACK, v.action(), v.toString());
        assertEquals("ck-20", v.rollback().checkpointId());
        return v;
    }

    @Test
    void aTargetTheTrainerCannotRestoreGivesWayToTheNextOlderKnownGoodOne_thenToAHaltOnTheRecord() {
        Verdict ordered = rollBackAt("r1", 1, 33);
        Verdict next = guard.restoreFailed("r1", 0, 33, "ck-20", "its file /ck/20 is gone, deleted since it was registered");
        assertEquals(Action.ROLLBACK, next.action(), next.toString());
        assertEquals("ck-10", next.rollback().checkpointId());
        assertEquals(ordered.rollback().attempt(), next.rollback().attempt(), "the same attempt, not a new one");
        assertEquals(ordered.rollback().lrFactor(), next.rollback().lrFactor());
        assertEquals(RunState.ROLLING_BACK, guard.run("r1").state());
        Incident said = last(IncidentKind.ROLLBACK);
        assertEquals(Severity.ERROR, said.severity());
        assertTrue(said.message().contains("checkpoint ck-20 (step 20) could not be restored by rank 0: its file /ck/20 is gone")
                && said.message().contains("rolling back to checkpoint ck-10 (step 10)"), said.message());

        Verdict halt = guard.restoreFailed("r1", 0, 33, "ck-10", "loading it failed (OSError)");
        assertEquals(Action.HALT, halt.action(), halt.toString());
        assertEquals(RunState.HALTED, guard.run("r1").state());
        assertTrue(last(IncidentKind.HALT).message().contains("could not be restored by rank 0: loading it failed")
                && last(IncidentKind.HALT).message().contains("No older known-good checkpoint"), last(IncidentKind.HALT).message());
        assertEquals(Action.HALT, guard.report(step("r1", 0, 11, 2.0, 0.5)).action(), "a halted run stays halted");
    }

    @Test
    void aSecondRankReportingTheSameTargetGetsTheNewPlanAndNoSecondIncident() {
        rollBackAt("r2", 2, 33);
        guard.restoreFailed("r2", 0, 33, "ck-20", "gone");
        int incidents = journal.incidents.size();
        Verdict second = guard.restoreFailed("r2", 1, 33, "ck-20", "gone");
        assertEquals(Action.ROLLBACK, second.action());
        assertEquals("ck-10", second.rollback().checkpointId());
        assertEquals(incidents, journal.incidents.size());
        // both ranks resume from the new plan's state: the rollback is confirmed from step 11
        assertEquals(Action.APPLY, guard.report(step("r2", 0, 11, 2.0, 0.5)).action());
        assertEquals(Action.APPLY, guard.report(step("r2", 1, 11, 2.0, 0.5)).action());
        assertEquals(RunState.DEGRADED, guard.run("r2").state());
    }

    @Test
    void restoreFailedWithoutAPendingRollbackOrAReasonIsRefusedInWords() {
        guard.open(setup("r3", 0, 1, null));
        var none = assertThrows(PreconditionFailedException.class, () -> guard.restoreFailed("r3", 0, 5, "ck-1", "gone"));
        assertTrue(none.getMessage().contains("has no rollback pending"), none.getMessage());
        var blank = assertThrows(InvalidRequestException.class, () -> guard.restoreFailed("r3", 0, 5, "ck-1", " "));
        assertTrue(blank.getMessage().contains("reason"), blank.getMessage());
    }

    private Incident last(IncidentKind kind) {
        List<Incident> all = journal.incidents.stream().filter(i -> i.kind() == kind).toList();
        return all.get(all.size() - 1);
    }
}
