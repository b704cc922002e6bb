package io.trainguard.guard;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.ClipMode;
import io.trainguard.guard.model.PrecisionSetup;
import io.trainguard.guard.model.RunSetup;
import io.trainguard.guard.model.Verdict;
import io.trainguard.guard.policy.Policy;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * Quality evidence with the production defaults (z = 6, alpha = 0.98, 64-step warm-up): no false
 * positive over 5 seeds of a realistic healthy run, and every injected spike or divergence caught.
 * Writes target/detector-quality.md, the table quoted in docs/policy.md.
 */
class DetectorQualityTest {
    private static final int STEPS = 3000;

    /** Loss of a healthy LM run: LR warm-up, cosine decay, multiplicative noise, occasional bumps. */
    private static double healthyLoss(int s, Random r) {
        double progress = (double) s / STEPS;
        double base = 2.2 + 6.0 * Math.exp(-s / 300.0) + 0.3 * (1 - progress);
        double noise = 1 + 0.03 * r.nextGaussian() + (r.nextDouble() < 0.01 ? 0.06 * r.nextDouble() : 0);
        return base * noise;
    }

    private static double healthyGrad(int s, Random r) {
        double warm = Math.min(1.0, s / 200.0);
        double lr = warm * 0.5 * (1 + Math.cos(Math.PI * s / STEPS));
        return (0.6 + 0.8 * Math.exp(-s / 400.0)) * (0.8 + 0.2 * lr) * Math.exp(0.12 * r.nextGaussian());
    }

    private static Policy production() {
        return Fixtures.defaults().toBuilder().let(b -> {
            b.clipMode = ClipMode.OFF;
            b.spikeWarmupSteps = 64;
            b.spikeEmaAlpha = 0.98;
            b.spikeZThreshold = 6.0;
            b.maxConsecutiveSkips = 1000;
            return b;
        });
    }

    private record Outcome(int falsePositives, long detectedAt, Action action) {
    }

    private Outcome run(long seed, String fault, int faultStep) {
        InMemoryJournal journal = new InMemoryJournal();
        GuardService guard = Fixtures.service(journal, new Fixtures.Checkpoints());
        Policy p = production();
        guard.open(new RunSetup("q" + seed + fault, 0, 1, b -> p.toBuilder(), List.of(), List.of(),
                PrecisionSetup.unknown(), "t"));
        Random r = new Random(seed);
        int falsePositives = 0;
        for (int s = 0; s < STEPS; s++) {
            double loss = healthyLoss(s, r);
            double grad = healthyGrad(s, r);
            if (s >= faultStep) {
                switch (fault) {
                    case "loss-spike" -> loss *= s == faultStep ? 3.0 : 1;
                    case "grad-spike" -> grad *= s == faultStep ? 20.0 : 1;
                    case "divergence" -> loss *= Math.pow(1.05, s - faultStep);
                    default -> {
                    }
                }
            }
            Verdict v = guard.report(Fixtures.step("q" + seed + fault, 0, s, loss, grad));
            if (v.action() != Action.APPLY) {
                if (s < faultStep) {
                    falsePositives++;
                } else {
                    return new Outcome(falsePositives, s, v.action());
                }
            }
            if (v.action() == Action.HALT) {
                break;
            }
        }
        return new Outcome(falsePositives, -1, Action.APPLY);
    }

    @Test
    void detectors_fiveHealthySeeds_noFalsePositives_andEveryInjectedFaultCaught() throws IOException {
        List<String> rows = new ArrayList<>();
        rows.add("| seed | healthy run: steps / detector firings | loss spike x3 at 1500: detected at / action | grad spike x20 at 1500 | divergence +5%/step from 1500 |");
        rows.add("|---|---|---|---|---|");
        int totalFalse = 0;
        for (long seed = 1; seed <= 5; seed++) {
            Outcome healthy = run(seed, "none", Integer.MAX_VALUE);
            Outcome loss = run(seed, "loss-spike", 1500);
            Outcome grad = run(seed, "grad-spike", 1500);
            Outcome div = run(seed, "divergence", 1500);
            totalFalse += healthy.falsePositives() + loss.falsePositives() + grad.falsePositives() + div.falsePositives();
            rows.add(String.format("| %d | %d / %d | %d / %s | %d / %s | %d / %s (%d steps) |", seed, STEPS,
                    healthy.falsePositives(), loss.detectedAt(), loss.action(), grad.detectedAt(), grad.action(),
                    div.detectedAt(), div.action(), div.detectedAt() - 1500));
            assertEquals(1500, loss.detectedAt(), "seed " + seed + ": loss spike caught at its step");
            assertEquals(1500, grad.detectedAt(), "seed " + seed + ": grad spike caught at its step");
            assertTrue(div.detectedAt() > 1500 && div.detectedAt() < 1600, "seed " + seed + ": divergence at " + div.detectedAt());
        }
        Files.createDirectories(Path.of("target"));
        Files.writeString(Path.of("target/detector-quality.md"), String.join("\n", rows) + "\n");
        assertEquals(0, totalFalse, String.join("\n", rows));
    }
}
