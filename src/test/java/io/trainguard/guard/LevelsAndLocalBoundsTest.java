package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.ClipMode;
import io.trainguard.guard.model.Verdict;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The level a run's statistics learn and how long the bounds built from it may be used by the client:
 * a phase of exactly-zero loss and grad norm carries no level, and local bounds end where the sidecar's
 * bound changes rule (and after 8 steps during the warm-up).
 */
class LevelsAndLocalBoundsTest {
    private final InMemoryJournal journal = new InMemoryJournal();
    private final GuardedRuns guard = service(journal, new Fixtures.Checkpoints());

    @Test
    void localBoundsLastOnlyUntilTheirRuleChanges_soALaggingClientDoesNotKeepTheFirstStepsLooseBound() {
        // prevents: the bounds of the first samples (~100x the level) valid for 64 steps: an asynchronous
        // client whose verdicts lagged applied a 60-80x loss spike at step 10 locally, where the sidecar had
        // a 13x bound from 8 samples on
        guard.open(setup("r1", 0, 1, null));
        Random noise = new Random(3);
        long[] validUntil = new long[80];
        for (int s = 0; s < 80; s++) {
            Verdict v = guard.report(step("r1", 0, s, 2.0 + 0.05 * noise.nextGaussian(), 0.5 + 0.02 * noise.nextGaussian()));
            validUntil[s] = v.bounds().validUntilStep();
        }
        int warmup = guard.run("r1").policy().spikeWarmupSteps();
        assertTrue(warmup > 12 && warmup < 64, "the test needs a warm-up between 8 samples and the window: " + warmup);
        assertEquals(7, validUntil[2], "3 samples: until the 8th, when the early robust bound takes over");
        assertEquals(7, validUntil[6]);
        assertEquals(10 + 8, validUntil[10], "11 samples, in the warm-up: 8 steps, the level moves fast then");
        assertEquals(warmup - 1, validUntil[warmup - 2], "until the warm-up ends, when the EMA bound comes in");
        assertEquals(70 + 64, validUntil[70], "warmed up: the whole window");
        Verdict lateSpike = guard.report(step("r1", 0, 80, 2.0 * 70, 0.5));
        assertEquals(Action.SKIP, lateSpike.action(), "the sidecar's own bound at that step is tight");
    }

    @ParameterizedTest
    @EnumSource(value = ClipMode.class, names = {"OFF", "ZSCORE", "PERCENTILE"})
    void aPhaseOfExactlyZeroLossAndGradNorm_leavesTheLevelItHadSoTheRunResumesWithoutAlarms(ClipMode mode) {
        // prevents: 20 steps of loss 0 and grad norm 0 (every sample masked, a frozen phase) becoming the
        // level: the first normal step after them a 100x "spike", never learned, and a healthy run skipped,
        // rolled back to its start and its LR halved
        guard.open(setup("r1", 0, 1, b -> {
            b.clipMode = mode;
            return b;
        }));
        Random noise = new Random(11);
        for (int s = 0; s < 120; s++) {
            boolean masked = s >= 30 && s < 50;
            double loss = masked ? 0.0 : 2.0 + 0.05 * noise.nextGaussian();
            double norm = masked ? 0.0 : 0.5 + 0.02 * noise.nextGaussian();
            Verdict v = guard.report(step("r1", 0, s, loss, norm));
            // AutoClip (PERCENTILE) clips healthy norms above its percentile by design
            Action expected = mode == ClipMode.PERCENTILE && v.action() == Action.CLIP ? Action.CLIP : Action.APPLY;
            assertEquals(expected, v.action(), mode + " step " + s + ": " + v.reasons());
        }
        assertTrue(journal.incidents.isEmpty(), journal.incidents.toString());
        Verdict spike = guard.report(step("r1", 0, 120, 2.0 * 50, 0.5));
        assertEquals(Action.SKIP, spike.action(), "a real spike is still one: " + spike.reasons());
    }
}
