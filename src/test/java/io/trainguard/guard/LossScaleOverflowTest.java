package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.Verdict;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;

/** fp16 AMP: a GradScaler calibrating its scale overflows several steps in a row; that is no incident. */
class LossScaleOverflowTest {
    private final InMemoryJournal journal = new InMemoryJournal();
    private final Fixtures.Checkpoints checkpoints = new Fixtures.Checkpoints();
    private final GuardedRuns guard = service(journal, checkpoints);

    private static StepReport overflow(long step, double scale) {
        return new StepReport("r1", 0, step, 2.0, false, Double.POSITIVE_INFINITY, new double[0], 1e-3, scale, List.of(),
                new boolean[] {true, true, true, true}, new double[0], Duration.ZERO, true);
    }

    @Test
    void report_scalerOverflowStreak_skipsWithoutIncidentOrRollback() {
        // prevents: the first steps of every fp16 run (scale 2^16 halving until it fits) halting the run
        guard.open(setup("r1", 0, 1, null));
        double scale = 65536;
        for (long s = 0; s < 8; s++, scale /= 2) {
            Verdict v = guard.report(overflow(s, scale));
            assertEquals(Action.SKIP, v.action(), "step " + s);
            assertEquals(RunState.HEALTHY, v.runState(), "step " + s);
            assertTrue(v.reasons().get(0).contains("loss-scaler overflow"), v.reasons().toString());
        }
        assertTrue(journal.incidents.isEmpty(), journal.incidents.toString());
        assertEquals(Action.APPLY, guard.report(step("r1", 0, 8, 2.0, 0.5)).action());
        // real non-finite steps still count from zero and halt after max_consecutive_skips (3)
        for (long s = 9; s < 12; s++) {
            assertEquals(Action.SKIP, guard.report(step("r1", 0, s, Double.NaN, 1)).action());
        }
        assertEquals(Action.HALT, guard.report(step("r1", 0, 12, Double.NaN, 1)).action());
    }

    @Test
    void report_anOverflowWhoseLossIsItselfASpike_isAnIncidentNotTheScalersCalibration() {
        // prevents: a x1000 loss under fp16 AMP (its scaled gradients overflow) filed as a neutral overflow:
        // no LOSS_SPIKE incident, no count towards the skip streak
        guard.open(setup("r1", 0, 1, null));
        java.util.Random noise = new java.util.Random(3);
        for (long s = 0; s < 40; s++) {
            guard.report(step("r1", 0, s, 2.0 + 0.05 * noise.nextGaussian(), 0.5 + 0.02 * noise.nextGaussian()));
        }
        StepReport spike = new StepReport("r1", 0, 40, 2000.0, false, Double.POSITIVE_INFINITY, new double[0], 1e-3, 1024,
                List.of(), new boolean[] {true, true, true, true}, new double[0], Duration.ZERO, true);
        Verdict v = guard.report(spike);
        assertEquals(Action.SKIP, v.action());
        assertTrue(v.reasons().stream().noneMatch(r -> r.contains("loss-scaler overflow")), v.reasons().toString());
        assertTrue(v.reasons().stream().anyMatch(r -> r.contains("no loss-scaler calibration")), v.reasons().toString());
        assertTrue(journal.incidents.stream().anyMatch(i -> i.step() == 40), "an incident: " + journal.incidents);
    }

    @Test
    void report_periodicScalerOverflow_doesNotCountAgainstKnownGoodCheckpoints() {
        // prevents: every growth-interval overflow of an fp16 run resetting the healthy streak that
        // promotes checkpoints to KNOWN_GOOD
        guard.open(setup("r1", 0, 1, null));
        guard.report(step("r1", 0, 0, 2.0, 0.5));
        guard.report(overflow(1, 65536));
        guard.report(step("r1", 0, 2, 2.0, 0.5));
        assertEquals(0, checkpoints.unhealthy);
        assertEquals(2, checkpoints.healthy);
    }

    @Test
    void report_overflowOnceTheScaleCollapsed_isANonFiniteIncident() {
        guard.open(setup("r1", 0, 1, null));
        for (long s = 0; s < 3; s++) {
            assertEquals(Action.SKIP, guard.report(overflow(s, 0.5)).action());
        }
        Verdict v = guard.report(overflow(3, 0.25));
        assertEquals(Action.HALT, v.action());
        assertTrue(v.reasons().stream().anyMatch(r -> r.contains("consecutive skipped steps")), v.reasons().toString());
    }

    @Test
    void report_infiniteGradWithANanLossScale_isANonFiniteIncident() {
        // prevents: a NaN loss scale passing for a calibrating scaler and hiding a real non-finite gradient
        guard.open(setup("r1", 0, 1, null));
        Verdict v = guard.report(overflow(0, Double.NaN));
        assertEquals(Action.SKIP, v.action());
        assertEquals(RunState.DEGRADED, v.runState());
        assertTrue(v.reasons().stream().noneMatch(r -> r.contains("loss-scaler overflow")), v.reasons().toString());
    }

    @Test
    void report_overflowWithANonFiniteActivation_isANonFiniteIncident() {
        guard.open(setup("r1", 0, 1, null));
        StepReport r = new StepReport("r1", 0, 0, 2.0, false, Double.POSITIVE_INFINITY, new double[0], 1e-3, 1024,
                List.of(), new boolean[] {true, false, true, true}, new double[0], Duration.ZERO, true);
        Verdict v = guard.report(r);
        assertEquals(Action.SKIP, v.action());
        assertEquals(RunState.DEGRADED, v.runState());
        assertEquals("block0", v.firstNonFiniteModule());
    }

    @Test
    void restore_fromJournal_countsOverflowLookingNonFiniteActivationsAsSkips() {
        // prevents: a restart forgetting a streak of real non-finite steps because, without their
        // module statistics, the journal's rows look like the scaler's own overflows
        guard.open(setup("r1", 0, 1, null));
        guard.report(step("r1", 0, 0, 2.0, 0.5));
        for (long s = 1; s < 3; s++) {
            StepReport r = new StepReport("r1", 0, s, 2.0, false, Double.POSITIVE_INFINITY, new double[0], 1e-3, 1024,
                    List.of(), new boolean[] {true, false, true, true}, new double[0], Duration.ZERO, true);
            assertEquals(Action.SKIP, guard.report(r).action());
        }
        guard.report(overflow(3, 1024)); // the scaler's own: no incident, not in the streak
        GuardedRuns restarted = service(journal, checkpoints);
        assertEquals(1, restarted.restore(512));
        assertEquals(2, new RunReads(restarted).view("r1", 10).run().consecutiveSkips());
    }

    @Test
    void restore_fromJournal_doesNotCountOverflowsAsSkips() {
        guard.open(setup("r1", 0, 1, null));
        guard.report(step("r1", 0, 0, 2.0, 0.5));
        for (long s = 1; s < 4; s++) {
            guard.report(overflow(s, 1024));
        }
        GuardedRuns restarted = service(journal, checkpoints);
        assertEquals(1, restarted.restore(512));
        RunSnapshot s = new RunReads(restarted).view("r1", 10).run();
        assertEquals(0, s.consecutiveSkips());
    }
}
