package io.trainguard.guard.detect;

import java.util.Arrays;

/**
 * The level of a signal from its first sample on: median and MAD of the last {@value #WINDOW}
 * admitted values. Unlike a mean, a few outliers cannot move it, so it can judge upward outliers
 * before an EMA has warmed up (an exploding RNN's losses of 1e3..1e12 in its first 20 steps) and
 * bound values absolutely after that.
 *
 * <p>The spread it judges with is {@code max(1.4826 * MAD, |median|, 0.01 * peak)}: never less than
 * the level itself (nor than 1% of the highest level so far), so a bound {@code median + k * spread} is at least {@code (1 + k)} times the level and
 * only jumps of an order of magnitude or more count. That keeps healthy early training clear: the
 * loss falling fast (only upward outliers count), a grad norm that rises during LR warm-up (the
 * window slides), or a near-constant first few values (a MAD of 0 would make any noise an outlier).
 */
public final class RobustBaseline {
    static final int WINDOW = 32;
    /** Fewer admitted values than this: the median is a guess, only the wide sanity bound applies. */
    public static final int MIN_SAMPLES = 8;
    private static final double MAD_TO_SIGMA = 1.4826;
    /**
     * The spread never falls below this fraction of the highest level the signal has had. A run
     * that converges to a loss of 0 and grad norms of 1e-14 (round-off) would otherwise see its
     * round-off noise as 100x explosions; measured against the run's own scale it is nothing.
     */
    static final double PEAK_FRACTION = 0.01;
    private final double[] ring = new double[WINDOW];
    private final double[] scratch = new double[WINDOW]; // no allocation per step
    private int size;
    private int next;
    private long count;
    private double median = Double.NaN;
    private double spread = Double.NaN;
    private double peak;

    /** Admits a finite value (callers winsorize it first so an outlier cannot become the level). */
    public void observe(double x) {
        if (!Double.isFinite(x)) {
            return;
        }
        ring[next] = x;
        next = (next + 1) % WINDOW;
        size = Math.min(size + 1, WINDOW);
        count++;
        System.arraycopy(ring, 0, scratch, 0, size);
        median = medianOfScratch();
        for (int i = 0; i < size; i++) {
            scratch[i] = Math.abs(ring[i] - median);
        }
        double mad = medianOfScratch();
        peak = Math.max(peak, Math.abs(median));
        spread = Math.max(Math.max(MAD_TO_SIGMA * mad, Math.abs(median)), Math.max(PEAK_FRACTION * peak, Double.MIN_NORMAL));
    }

    private double medianOfScratch() {
        Arrays.sort(scratch, 0, size);
        // The lower median: with two values (the first loss and an exploding second one) the level
        // stays the first, not their mean.
        return scratch[(size - 1) / 2];
    }

    /** Values admitted so far (all time, not only the window). */
    public long count() {
        return count;
    }

    /** Median of the window; NaN before the first value. */
    public double median() {
        return median;
    }

    /** The highest |median| seen so far: the scale of the signal over the run (0 before the first value). */
    public double peak() {
        return peak;
    }

    /** {@code max(1.4826 * MAD, |median|, 0.01 * peak)}; NaN before the first value. */
    public double spread() {
        return spread;
    }

    /**
     * {@code median + k * spread}; +inf before the first non-zero value (nothing to compare with yet).
     * A signal that has only been 0 (a first batch whose tokens are all masked: loss 0, grad norm 0)
     * has no scale: a bound of {@code k * Double.MIN_NORMAL} would make every later value a spike, and
     * spikes are never admitted, so the level would stay 0 and the run be skipped, rolled back and
     * halted on healthy steps.
     */
    public double upperBound(double k) {
        return count == 0 || peak <= 0 ? Double.POSITIVE_INFINITY : median + k * spread;
    }

    /** How many times the level x is ({@code x / median}), or NaN when that ratio means nothing. */
    public double ratio(double x) {
        return count == 0 || median <= 0 ? Double.NaN : x / median;
    }
}
