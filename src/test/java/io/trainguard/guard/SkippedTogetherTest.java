package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.StepRecord;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.Verdict;
import java.time.Duration;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * Several ranks on the device gate skip an update together when one of them saw a fault or their
 * grad norms disagreed; the ranks whose own values were finite say so (skippedByAgreement). Their
 * steps must be recorded as the skips they were, without teaching their statistics a norm the
 * update never used, and without a skip streak of their own.
 */
class SkippedTogetherTest {
    private final InMemoryJournal journal = new InMemoryJournal();
    private final GuardedRuns guard = service(journal, new Fixtures.Checkpoints());

    private static StepReport together(String run, int rank, long step, double gradNorm) {
        return together(run, rank, step, 2.0, gradNorm);
    }

    private static StepReport together(String run, int rank, long step, double loss, double gradNorm) {
        return new StepReport(run, rank, step, loss, false, gradNorm, new double[0], 1e-3, 0, List.of(), new boolean[0],
                new double[0], Duration.ZERO, false, true);
    }

    private RunState state(GuardedRuns g, String run) {
        return new RunReads(g).view(run, 10).run().state();
    }

    private Verdict healthySteps(String run, long from, long to) {
        Random noise = new Random(3);
        Verdict last = null;
        for (long s = from; s < to; s++) {
            double norm = 0.5 + 0.02 * noise.nextGaussian();
            guard.report(step(run, 0, s, 2.0, norm));
            last = guard.report(step(run, 1, s, 2.0, norm));
            assertEquals(Action.APPLY, last.action(), "step " + s);
        }
        return last;
    }

    /**
     * Both ranks skip {@code step} together, their norms disagreeing (an incident, the run DEGRADED),
     * then a second service restores the run from the journal: the live service and the restored one,
     * to drive alike.
     */
    private List<GuardedRuns> skipTogetherThenRestart(String run, long step) {
        guard.report(together(run, 0, step, 0.5));
        guard.report(together(run, 1, step, 0.75));
        GuardedRuns restarted = service(journal, new Fixtures.Checkpoints());
        assertEquals(1, restarted.restore(512));
        return List.of(guard, restarted);
    }

    private static void healthyStep(GuardedRuns g, String run, long step) {
        g.report(step(run, 0, step, 2.0, 0.5));
        g.report(step(run, 1, step, 2.0, 0.5));
    }

    private StepRecord recorded(String run, int rank, long step) {
        return journal.steps.stream().filter(s -> s.runId().equals(run) && s.rank() == rank && s.step() == step)
                .findFirst().orElseThrow();
    }

    @Test
    void aStepSkippedOnAnotherRanksAccount_isRecordedAsSkip_andTeachesThatRankNothing() {
        // prevents: the journal saying APPLY for an update the device skipped, and a corrupt rank's norm
        // moving that rank's bounds (the grad-norm bound it decides healthy steps by) for the steps after
        guard.open(setup("t1", 0, 2, null));
        Verdict before = healthySteps("t1", 0, 30);
        guard.report(step("t1", 0, 30, Double.NaN, Double.NaN)); // rank 0's own fault
        // rank 1: finite, and no spike (2.5 sigma), so the bounds would move had it been learned
        Verdict v = guard.report(together("t1", 1, 30, 0.55));
        assertEquals(Action.SKIP, v.action());
        assertTrue(v.reasons().get(0).contains("together with the other ranks"), v.reasons().toString());
        assertEquals(Action.SKIP, recorded("t1", 1, 30).action());
        assertEquals(before.bounds().maxGradNorm(), v.bounds().maxGradNorm(), 0.0);
        assertEquals(before.bounds().clipThreshold(), v.bounds().clipThreshold(), 0.0);
        // the same norm from a healthy step does move the bound: the assertion above can fail
        guard.report(step("t1", 0, 31, 2.0, 0.55));
        Verdict learned = guard.report(step("t1", 1, 31, 2.0, 0.55));
        assertTrue(learned.bounds().maxGradNorm() != before.bounds().maxGradNorm(), learned.bounds().toString());
    }

    @Test
    void aSkipTakenTogether_doesNotCountTowardsRecovery_norRestartIt() {
        // prevents: a skip taken together counted as a healthy step (a run recovering early) or as a
        // faulty one (recovering late), live or after a restart
        guard.open(setup("t6", 0, 2, null));
        healthySteps("t6", 0, 20);
        guard.report(step("t6", 0, 20, Double.NaN, Double.NaN));
        guard.report(step("t6", 1, 20, Double.NaN, Double.NaN)); // both ranks' own faults: streaks at 0
        assertEquals(RunState.DEGRADED, state(guard, "t6"));
        healthySteps("t6", 21, 24); // a streak of 3 of the policy's 5 recovery steps
        for (GuardedRuns g : skipTogetherThenRestart("t6", 24)) {
            healthyStep(g, "t6", 25);
            assertEquals(RunState.DEGRADED, state(g, "t6"), "4 healthy steps: had the skip counted, 5");
            healthyStep(g, "t6", 26);
            assertEquals(RunState.HEALTHY, state(g, "t6"), "5 healthy steps: had the skip ended the streak, 2");
        }
    }

    @Test
    void aRanksOwnFault_isRecordedAsSuch_evenWhenItSaysTheRanksSkippedTogether() {
        // prevents: the flag hiding this rank's own non-finite values (no incident, no skip streak)
        guard.open(setup("t7", 0, 2, null));
        healthySteps("t7", 0, 20);
        for (long s = 20; s < 24; s++) { // four in a row, beyond the policy's 3 consecutive skips
            guard.report(together("t7", 0, s, 0.5));
            Verdict v = guard.report(together("t7", 1, s, Double.NaN, Double.NaN));
            long step = s;
            assertTrue(journal.incidents.stream().anyMatch(i -> i.rank() == 1 && i.step() == step
                    && i.kind() == IncidentKind.NON_FINITE_LOSS), "step " + s);
            // its own skips make a streak: the fourth is beyond the limit (no checkpoint to roll back to: HALT)
            assertEquals(s < 23 ? Action.SKIP : Action.HALT, v.action(), "step " + s);
        }
    }

    @Test
    void skipsOnAnotherRanksAccount_doNotMakeAStreakOfTheirOwn() {
        // prevents: a healthy rank ordering a rollback of its own for faults another rank counts
        guard.open(setup("t2", 0, 2, null));
        healthySteps("t2", 0, 20);
        for (long s = 20; s < 30; s++) { // ten in a row, beyond the policy's 3 consecutive skips
            Verdict v = guard.report(together("t2", 1, s, 0.5));
            assertEquals(Action.SKIP, v.action(), "step " + s);
        }
        assertEquals(Action.APPLY, guard.report(step("t2", 1, 30, 2.0, 0.5)).action());
    }

    @Test
    void aSkipTakenTogether_neitherEndsNorExtendsAHealthyStreak_asARestartRebuildsIt() {
        // prevents: a restart changing when a run recovers (the journal holds no fault for such a skip)
        guard.open(setup("t5", 0, 2, null));
        healthySteps("t5", 0, 20); // a streak of 20, beyond the policy's 5 recovery steps
        for (GuardedRuns g : skipTogetherThenRestart("t5", 20)) {
            assertEquals(RunState.DEGRADED, state(g, "t5")); // the mismatch's incident
            healthyStep(g, "t5", 21);
            assertEquals(RunState.HEALTHY, state(g, "t5"), "the streaks held through step 20");
        }
    }

    @Test
    void aSingleRankRun_refusesASkipTakenTogether_withAnActionableError() {
        guard.open(setup("t4", 0, 1, null));
        InvalidRequestException e = assertThrows(InvalidRequestException.class, () -> guard.report(together("t4", 0, 0, 0.5)));
        assertTrue(e.getMessage().contains("world size 1"), e.getMessage());
        assertEquals(Action.APPLY, guard.report(step("t4", 0, 0, 2.0, 0.5)).action()); // and keeps serving
    }

    @Test
    void ranksWhoseNormsDisagreed_areStillComparedAndTheMismatchRecorded() {
        // prevents: the skip hiding the silent-data-corruption incident that names the odd rank
        guard.open(setup("t3", 0, 2, null));
        healthySteps("t3", 0, 20);
        assertEquals(Action.SKIP, guard.report(together("t3", 0, 20, 0.5)).action());
        Verdict v = guard.report(together("t3", 1, 20, 0.75));
        assertEquals(Action.SKIP, v.action());
        assertEquals(IncidentKind.CROSS_RANK_MISMATCH, journal.incidents.get(journal.incidents.size() - 1).kind());
        assertEquals(1, v.incidentIds().size());
    }
}
