package io.trainguard.guard.detect;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;

class ClipRuleTest {
    @Test
    void zscoreClip_spikeAfterWarmup_clipsBelowSpikeAndFeedsClippedValue() {
        var clip = new ZScoreClip(0.97, 25, 2.5);
        Random r = new Random(3);
        for (int i = 0; i < 100; i++) {
            double g = 1.0 + 0.05 * r.nextGaussian();
            assertTrue(Double.isInfinite(clip.thresholdFor(g)) || g > 1.1, "normal norm " + g);
            clip.observe(g);
        }
        double t = clip.thresholdFor(10.0);
        assertTrue(t > 0.9 && t < 1.3, "ZClip pulls a 180-sigma spike back to about the mean, got " + t);
        clip.observe(10.0);
        // The spike entered the statistics clipped: the next normal norm is still not clipped.
        assertTrue(Double.isInfinite(clip.thresholdFor(1.05)));
    }

    @Test
    void percentileClip_clipsAtPercentileOfHistory() {
        var clip = new PercentileClip(50, 5);
        for (int i = 1; i <= 100; i++) {
            clip.observe(i);
        }
        assertEquals(50.0, clip.thresholdFor(80));
        assertTrue(Double.isInfinite(clip.thresholdFor(30)));
    }

    @Test
    void percentileClip_pastItsCapacity_usesTheMostRecentNormsOnly() {
        // prevents: the in-place sorted history drifting from the ring once old norms are evicted
        var clip = new PercentileClip(10, 5);
        Random r = new Random(7);
        java.util.ArrayDeque<Double> recent = new java.util.ArrayDeque<>();
        for (int i = 0; i < 20_000; i++) {
            double g = Math.round(r.nextDouble() * 49) + 1 + (i > 15_000 ? 100 : 0); // repeats, a level shift (0 is no signal)
            clip.observe(g);
            recent.addLast(g);
            if (recent.size() > 8192) {
                recent.removeFirst();
            }
            if (i >= 4 && (i % 997 == 0 || i == 19_999)) {
                double[] want = recent.stream().mapToDouble(Double::doubleValue).sorted().toArray();
                double expected = want[(int) Math.ceil(0.10 * want.length) - 1];
                assertEquals(expected, clip.localThreshold(), "after " + (i + 1) + " norms");
            }
        }
    }

    @Test
    void hangWatch_learnsStepTimeAndFlagsSilence() {
        var watch = new HangWatch(0);
        long ms = 1_000_000;
        for (int s = 0; s < 20; s++) {
            watch.progress(io.trainguard.guard.model.Phase.STEP, s, s * 100 * ms);
        }
        var min = java.time.Duration.ofMillis(10);
        var max = java.time.Duration.ofSeconds(60);
        assertTrue(watch.overdue(19 * 100 * ms + 300 * ms, 5, min, max).isZero(), "3 steps' time is not a hang");
        assertTrue(!watch.overdue(19 * 100 * ms + 600 * ms, 5, min, max).isZero(), "6 steps' time is a hang");
    }

    @Test
    void divergence_oneHugeBadBatch_isNotDivergence() {
        // A x1000 loss from one bad batch is a spike; it must not later be called divergence.
        var d = new DivergenceDetector(2.0, 10, 20);
        for (int s = 0; s < 100; s++) {
            assertTrue(!d.observe(s == 50 ? 2000.0 : 2.0 + 0.01 * Math.sin(s)), "step " + s);
        }
    }
}
