package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static io.trainguard.guard.Fixtures.stepWithModules;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.StepReport;
import java.util.Random;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * A restart rebuilds a rank's skip streak from the journal: a skipped step counts when it has an
 * incident of a kind in {@link IncidentKind#STEP_FAULTS}, a hand-kept set. Every kind of fault the
 * step detectors skip is tried here, so a detector whose skips the set misses fails this test (add
 * its fault to {@link Fault} with the detector).
 */
class SkipStreakAcrossRestartTest {
    enum Fault {
        NAN_LOSS, INF_GRAD_NORM, NAN_MODULE_OUTPUT, LOSS_SPIKE, GRAD_SPIKE;

        StepReport at(long s) {
            return switch (this) {
                case NAN_LOSS -> step("r", 0, s, Double.NaN, 0.5);
                case INF_GRAD_NORM -> step("r", 0, s, 2.0, Double.POSITIVE_INFINITY);
                case NAN_MODULE_OUTPUT -> stepWithModules("r", s, 2.0, 0.5, new boolean[] {true, false, true, true});
                case LOSS_SPIKE -> step("r", 0, s, 50.0, 0.5);
                case GRAD_SPIKE -> step("r", 0, s, 2.0, 500.0);
            };
        }
    }

    private final InMemoryJournal journal = new InMemoryJournal();
    private final Fixtures.Checkpoints checkpoints = new Fixtures.Checkpoints();

    @ParameterizedTest
    @EnumSource(Fault.class)
    void restore_afterTwoSkippedFaults_keepsTheStreakOfTwo(Fault fault) {
        GuardedRuns guard = service(journal, checkpoints);
        guard.open(setup("r", 0, 1, null));
        Random noise = new Random(7);
        for (long s = 0; s < 40; s++) {
            guard.report(step("r", 0, s, 2.0 + 0.05 * noise.nextGaussian(), 0.5 + 0.02 * noise.nextGaussian()));
        }
        assertEquals(Action.SKIP, guard.report(fault.at(40)).action(), fault + " is skipped");
        assertEquals(Action.SKIP, guard.report(fault.at(41)).action(), fault + " is skipped again");
        assertEquals(2, new RunReads(guard).view("r", 10).run().consecutiveSkips());

        GuardedRuns restarted = service(journal, checkpoints);
        assertEquals(1, restarted.restore(512));
        RunSnapshot after = new RunReads(restarted).view("r", 10).run();
        assertEquals(2, after.consecutiveSkips(), fault + ": the streak survives the restart");
        assertTrue(journal.incidents.stream().allMatch(i -> IncidentKind.STEP_FAULTS.contains(i.kind())),
                fault + " journaled " + journal.incidents.stream().map(i -> i.kind()).toList());
    }
}
