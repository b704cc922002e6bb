package io.trainguard.guard.detect;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Random;
import org.junit.jupiter.api.Test;

class SpikeDetectorTest {
    private static final double Z = 6;

    @Test
    void isSpike_noHistory_neverSpike() {
        // Prevents: judging the very first value against nothing (every first loss would be an outlier).
        var d = new SpikeDetector(0.98, 64, Z);
        assertFalse(d.isSpike(1e12, Z));
        assertEquals(Double.POSITIVE_INFINITY, d.upperBound(Z));
    }

    @Test
    void isSpike_secondValueThousandTimesTheFirst_spikeBeforeWarmup() {
        // Prevents: issue 15 - no loss bound until 64 samples, so a 1e3x loss at step 1 was applied.
        var d = new SpikeDetector(0.98, 64, Z);
        d.observe(6.9);
        assertTrue(d.isSpike(6.9e3, Z));
        assertFalse(d.isSpike(6.9 * 50, Z), "with one sample only ~100x jumps are sure outliers");
        assertTrue(d.explain("loss", 6.9e3, Z).contains("before the 64-sample warm-up"), d.explain("loss", 6.9e3, Z));
    }

    @Test
    void isSpike_firstValuesExactlyZero_laterHealthyValuesAreNotSpikes() {
        // Prevents: a first batch whose tokens are all masked (loss 0, grad norm 0) giving a bound of
        // k * Double.MIN_NORMAL: every later healthy step a spike, skipped, rolled back, then halted.
        var d = new SpikeDetector(0.98, 64, Z);
        d.observe(0.0);
        double[] healthy = {15.5, 10.2, 9.8, 9.1, 8.7, 8.9, 8.2, 7.9, 7.5, 7.7, 7.2};
        for (double x : healthy) {
            assertFalse(d.isSpike(x, Z), "healthy value " + x + " after a first 0");
            d.observe(x);
        }
        assertTrue(d.isSpike(150 * 7.5, Z), "once the signal has a level, a 150x jump is a spike again");
    }

    @Test
    void isSpike_eightSamples_orderOfMagnitudeJumpCaught() {
        // Prevents: an early bound so wide that a 20x jump at step 10 passes.
        var d = new SpikeDetector(0.98, 64, Z);
        for (int i = 0; i < 10; i++) {
            d.observe(5.0 - 0.1 * i);
        }
        assertTrue(d.isSpike(20 * 4.5, Z));
        assertFalse(d.isSpike(3 * 4.5, Z), "a 3x bump before warm-up is not an explosion");
    }

    @Test
    void isSpike_lossFallingFastAndNoisy_neverSpike() {
        // Prevents: flagging healthy early training, whose loss drops 5x in 30 steps (do no harm).
        var d = new SpikeDetector(0.98, 64, Z);
        Random r = new Random(7);
        for (int s = 0; s < 300; s++) {
            double loss = (1 + 9 * Math.exp(-s / 10.0)) * (1 + 0.1 * r.nextGaussian());
            assertFalse(d.isSpike(loss, Z), "step " + s + " loss " + loss);
            d.observe(loss);
        }
    }

    @Test
    void observe_appliedExplosion_winsorizedSoLaterSpikesStillCaught() {
        // Prevents: a spike applied anyway (spike action CLIP) entering the EMA: later spikes were judged
        // against a mean of 9.6e10.
        var d = new SpikeDetector(0.98, 64, Z);
        for (int s = 0; s < 20; s++) {
            d.observe(5.0);
        }
        for (int s = 0; s < 17; s++) {
            d.observe(1.4e3 * Math.pow(10, s * 0.6));
        }
        for (int s = 0; s < 100; s++) {
            d.observe(5.0 + 0.05 * Math.sin(s));
        }
        assertTrue(d.mean() < 100, "mean " + d.mean());
        assertTrue(d.isSpike(50, Z));
    }

    @Test
    void upperBound_afterWarmup_neverWiderThanHundredTimesTheLevel() {
        // Prevents: a run with a wild EMA std letting a loss of 1000x the median through as APPLY.
        var d = new SpikeDetector(0.98, 16, Z);
        Random r = new Random(3);
        for (int s = 0; s < 200; s++) {
            d.observe(Math.abs(r.nextGaussian()) * (s % 10 == 0 ? 30 : 1));
        }
        assertTrue(d.upperBound(Z) < 100 * 2, "bound " + d.upperBound(Z));
    }

    @Test
    void upperBound_hugeZ_turnsEarlyRulesOffToo() {
        // Prevents: spike_z_threshold = 1e9 (spike detection off) still skipping early steps.
        var d = new SpikeDetector(0.98, 64, 1e9);
        d.observe(1.0);
        assertFalse(d.isSpike(1e6, 1e9));
    }

    @Test
    void zScoreClip_explosionDuringWarmup_doesNotRaiseTheMeanItClipsAgainst() {
        // Prevents: ZClip learning raw warm-up norms, so that an early 1e6 norm makes every later clip void.
        var clip = new ZScoreClip(0.97, 25, 2.5);
        for (int s = 0; s < 10; s++) {
            clip.observe(1.0 + 0.01 * s);
        }
        clip.observe(1e6);
        for (int s = 0; s < 40; s++) {
            clip.observe(1.0 + 0.01 * (s % 5));
        }
        assertTrue(Double.isFinite(clip.thresholdFor(20.0)), "a 20x norm after warm-up is clipped");
    }

    @Test
    void divergence_oneExplodedLoss_doesNotBlindTheSlowMean() {
        // Prevents: one 1e12 loss (skipped as a spike, still seen here) raising the slow EMA for 1000 steps.
        var d = new DivergenceDetector(2.0, 10, 20);
        for (int s = 0; s < 100; s++) {
            d.observe(s == 30 ? 1e12 : 3.0);
        }
        boolean caught = false;
        for (int s = 0; s < 60 && !caught; s++) {
            caught = d.observe(3.0 * Math.pow(1.05, s));
        }
        assertTrue(caught, "divergence after an exploded loss, best " + d.best());
    }

    @Test
    void isSpike_runConvergedToRoundOff_noiseIsNotSpike() {
        // Prevents: a CNN that reached loss 0 and grad norms of 1e-14 being skipped at every step,
        // its round-off noise judged as 1e5x explosions against a median of 3e-16.
        var d = new SpikeDetector(0.98, 64, Z);
        Random r = new Random(5);
        for (int s = 0; s < 400; s++) {
            double g = s < 50 ? 1.0 * Math.exp(-s / 10.0) : Math.pow(10, -16 + 4 * r.nextDouble());
            assertFalse(d.isSpike(g, Z), "step " + s + " grad " + g);
            d.observe(g);
        }
        assertTrue(d.isSpike(5.0, Z), "a norm 5x the run's peak is still an explosion");
    }

    @Test
    void robustBaseline_twoValues_levelIsTheLowerOne() {
        // Prevents: the mean of a first loss and an exploding second one becoming the level.
        var b = new RobustBaseline();
        b.observe(5);
        b.observe(5e3);
        assertEquals(5, b.median());
    }
}
