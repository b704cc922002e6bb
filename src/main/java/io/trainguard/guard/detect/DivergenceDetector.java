package io.trainguard.guard.detect;

/**
 * Steady divergence (too high an LR) rarely looks like one spike: the loss drifts up while the
 * moving statistics follow it. This compares the short-term loss level with the best (lowest) slow
 * EMA seen; staying above {@code ratio} times that best for {@code window} consecutive steps is
 * divergence (llm-foundry's KillLossSpike uses 2x the running mean for more than 4 steps). The
 * short-term level is the median of the last few losses, so one bad batch (a spike, which the spike
 * detector handles) cannot look like divergence however large it is, nor move the slow EMA.
 */
public final class DivergenceDetector {
    private static final int RECENT = 5;
    private static final double SLOW_ALPHA = 0.98;
    private final double[] recent = new double[RECENT];
    private final double[] sorted = new double[RECENT]; // scratch: no allocation per step
    private final double ratio;
    private final int window;
    private final int warmup;
    private long count;
    private double fast;
    private double slow;
    private double bestSlow = Double.POSITIVE_INFINITY;
    private int above;

    public DivergenceDetector(double ratio, int window, int warmup) {
        this.ratio = ratio;
        this.window = window;
        this.warmup = warmup;
    }

    /** Feeds one finite loss; returns true once the loss has stayed diverged for the whole window. */
    public boolean observe(double loss) {
        if (!Double.isFinite(loss) || NoSignal.isExactZero(loss)) {
            return false;
        }
        recent[(int) (count % RECENT)] = loss;
        count++;
        fast = median();
        // The slow EMA follows the median, not the raw loss: one exploded loss (1e12, skipped as a
        // spike) would otherwise raise it for a thousand steps and blind this detector meanwhile.
        slow = count == 1 ? loss : SLOW_ALPHA * slow + (1 - SLOW_ALPHA) * fast;
        if (count < warmup) {
            return false;
        }
        bestSlow = Math.min(bestSlow, slow);
        boolean diverged = bestSlow > 0 ? fast > ratio * bestSlow : fast > bestSlow + Math.abs(bestSlow) * (ratio - 1);
        above = diverged ? above + 1 : 0;
        return above >= window;
    }

    private double median() {
        int n = (int) Math.min(count, RECENT);
        System.arraycopy(recent, 0, sorted, 0, n);
        java.util.Arrays.sort(sorted, 0, n);
        return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
    }

    /** After a rollback the trainer resumes from an earlier state; start judging afresh. */
    public void reset() {
        above = 0;
        java.util.Arrays.fill(recent, slow);
        fast = slow;
    }

    public double fast() {
        return fast;
    }

    public double best() {
        return bestSlow;
    }
}
