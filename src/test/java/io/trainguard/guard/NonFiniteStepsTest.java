package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.Verdict;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Where a step went non-finite: the verdict, the incident and the module it is charged to. */
class NonFiniteStepsTest {
    private final InMemoryJournal journal = new InMemoryJournal();
    private final GuardedRuns guard = service(journal, new Fixtures.Checkpoints());

    @Test
    void report_nanLoss_skipsAndJournalsIncident() {
        // Prevents the Keras TerminateOnNaN failure: a NaN step must never be APPLY.
        guard.open(setup("r1", 0, 1, null));
        Verdict v = guard.report(step("r1", 0, 0, Double.NaN, 0.5));
        assertEquals(Action.SKIP, v.action());
        assertEquals(RunState.DEGRADED, v.runState());
        assertEquals(1, journal.incidents.size());
        assertEquals(IncidentKind.NON_FINITE_LOSS, journal.incidents.get(0).kind());
        assertEquals(List.of(journal.incidents.get(0).id()), v.incidentIds());
    }

    @Test
    void report_infGradNorm_skips() {
        guard.open(setup("r1", 0, 1, null));
        assertEquals(Action.SKIP, guard.report(step("r1", 0, 0, 1.0, Double.POSITIVE_INFINITY)).action());
    }

    @Test
    void report_nonFiniteModule_namesFirstModuleInForwardOrder() {
        // The provenance people need: the first module (forward order) whose output went non-finite.
        guard.open(setup("r1", 0, 1, null));
        Verdict v = guard.report(Fixtures.stepWithModules("r1", 3, Double.NaN, Double.NaN, new boolean[] {true, false, false, true}));
        assertEquals(Action.SKIP, v.action());
        assertEquals("block0", v.firstNonFiniteModule());
        assertEquals(IncidentKind.NON_FINITE_MODULE, journal.incidents.get(0).kind());
        assertEquals("block0", journal.incidents.get(0).module());
    }

    @Test
    void report_outputMaskedWithMinusInfinityAndFiniteLossAndGrads_appliesWithoutAnIncident() {
        // Prevents: a head that masks invalid actions or a vocabulary with -inf (max |x| = inf, loss and
        // gradients finite) skipped at every step, then rolled back until the run halted.
        guard.open(setup("r1", 0, 1, null));
        StepReport masked = new StepReport("r1", 0, 0, 2.0, false, 0.5, new double[0], 1e-3, 0,
                List.of("body", "head"), new boolean[] {true, false}, new double[] {3.0, Double.POSITIVE_INFINITY},
                java.time.Duration.ZERO, false);
        assertEquals(Action.APPLY, guard.report(masked).action());
        assertEquals(0, journal.incidents.size());
    }

    @Test
    void report_nanInAnOutputWithFiniteLoss_stillSkipsAndAnInfBeforeANaNGradIsNamed() {
        // Prevents: the masking rule opening a hole. A NaN output is a fault whatever the loss says, and
        // on a non-finite step the first non-finite output is named, Inf included (an fp16 overflow).
        guard.open(setup("r1", 0, 1, null));
        StepReport nan = new StepReport("r1", 0, 0, 2.0, false, 0.5, new double[0], 1e-3, 0,
                List.of("body", "head"), new boolean[] {false, true}, new double[] {Double.NaN, 1.0},
                java.time.Duration.ZERO, false);
        Verdict v = guard.report(nan);
        assertEquals(Action.SKIP, v.action());
        assertEquals("body", v.firstNonFiniteModule());
        StepReport overflow = new StepReport("r1", 0, 1, Double.NaN, false, Double.NaN, new double[0], 1e-3, 0,
                List.of("body", "head"), new boolean[] {false, false},
                new double[] {Double.POSITIVE_INFINITY, Double.NaN}, java.time.Duration.ZERO, false);
        assertEquals("body", guard.report(overflow).firstNonFiniteModule());
    }

    @Test
    void report_reusedModuleSecondCallNonFinite_namesTheCallNotTheModulesFirstRun() {
        // Prevents: issue 15's RNN LM, where a Dropout used before and after the RNN took the blame
        // (recorded once, at its first call) for NaN that the RNN produced.
        guard.open(setup("r1", 0, 1, null));
        StepReport r = new StepReport("r1", 0, 3, Double.NaN, false, Double.NaN, new double[0], 1e-3, 0,
                List.of("embed", "drop", "rnn", "drop", "head"), new boolean[] {true, true, false, false, false},
                new double[0], java.time.Duration.ZERO, false);
        Verdict v = guard.report(r);
        assertEquals("rnn", v.firstNonFiniteModule());
        StepReport second = new StepReport("r1", 0, 4, Double.NaN, false, Double.NaN, new double[0], 1e-3, 0,
                List.of("embed", "drop", "rnn", "drop", "head"), new boolean[] {true, true, true, false, false},
                new double[0], java.time.Duration.ZERO, false);
        Verdict w = guard.report(second);
        assertEquals("drop", w.firstNonFiniteModule());
        assertTrue(w.reasons().get(0).contains("its call 2 of 2 this step"), w.reasons().get(0));
    }
}
