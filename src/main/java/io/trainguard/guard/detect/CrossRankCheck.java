package io.trainguard.guard.detect;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Optional;

/**
 * Data-parallel ranks all-reduce their gradients, so every rank must see the same global grad norm
 * for the same step (fairseq checks 1e-6 relative). A rank that disagrees computed on corrupted
 * data or hardware: silent data corruption, named by rank.
 *
 * <p>The norms of the last {@value #STEPS_KEPT} steps are kept in a ring of primitive arrays
 * (slot = step mod {@value #STEPS_KEPT}, one value per rank, NaN = not reported yet): this runs for
 * every report of a multi-rank run, so it allocates nothing once the arrays have grown to the world size.
 * Each slot also keeps the smallest and largest norm reported: for non-negative norms a new one agrees
 * with every earlier one exactly when it agrees with both, so a healthy report costs O(1), not a walk
 * over the ranks.
 */
public final class CrossRankCheck {
    private static final int STEPS_KEPT = 16;
    private final long[] slotStep = new long[STEPS_KEPT];
    private final double[][] norms = new double[STEPS_KEPT][0];
    private final double[] slotMin = new double[STEPS_KEPT];
    private final double[] slotMax = new double[STEPS_KEPT];

    public CrossRankCheck() {
        Arrays.fill(slotStep, Long.MIN_VALUE);
    }

    /**
     * {@code rank} disagrees with {@code referenceRank}. {@code suspects}: the ranks outside the
     * largest group of agreeing ranks among those reported for the step, when one group is larger
     * than every other and has at least two members; empty when the reports cannot tell (two ranks,
     * or a tie), since the first rank to report may as well be the corrupted one.
     */
    public record Mismatch(int rank, double norm, int referenceRank, double referenceNorm, List<Integer> suspects,
            int agreeing, int reported) {
    }

    /** Records a finite norm and returns the first disagreement with a rank already seen for this step. */
    public synchronized Optional<Mismatch> record(long step, int rank, double gradNorm, double rtol) {
        if (rtol <= 0 || !Double.isFinite(gradNorm)) {
            return Optional.empty();
        }
        int slot = Math.floorMod(step, STEPS_KEPT);
        double[] seen = norms[slot];
        if (slotStep[slot] != step) {
            slotStep[slot] = step;
            Arrays.fill(seen, Double.NaN);
            slotMin[slot] = Double.POSITIVE_INFINITY;
            slotMax[slot] = Double.NEGATIVE_INFINITY;
        }
        if (rank >= seen.length) {
            int old = seen.length;
            seen = norms[slot] = Arrays.copyOf(seen, Math.max(rank + 1, 2 * old));
            Arrays.fill(seen, old, seen.length, Double.NaN);
        }
        boolean agreesWithAll = slotMin[slot] > slotMax[slot] // nothing reported yet
                || (gradNorm >= 0 && slotMin[slot] >= 0
                        && agree(gradNorm, slotMin[slot], rtol) && agree(gradNorm, slotMax[slot], rtol));
        int reference = -1;
        for (int other = 0; !agreesWithAll && other < seen.length && reference < 0; other++) {
            if (other != rank && !Double.isNaN(seen[other]) && !agree(gradNorm, seen[other], rtol)) {
                reference = other; // the first rank it disagrees with (a re-reported rank's old value is not one)
            }
        }
        seen[rank] = gradNorm;
        slotMin[slot] = Math.min(slotMin[slot], gradNorm);
        slotMax[slot] = Math.max(slotMax[slot], gradNorm);
        if (reference < 0) {
            return Optional.empty();
        }
        return Optional.of(attribute(seen, rank, reference, rtol));
    }

    /**
     * Forgets every step's norms: after a rollback the ranks report the steps past the checkpoint again,
     * from the restored weights, and their new norms must not be compared with the old ones.
     */
    public synchronized void clear() {
        Arrays.fill(slotStep, Long.MIN_VALUE);
    }

    private static boolean agree(double a, double b, double rtol) {
        return Math.abs(a - b) <= rtol * Math.max(Math.abs(a), Math.abs(b));
    }

    /**
     * Runs only on a mismatch: which ranks stand outside the one largest group of agreeing norms.
     * Once one rank is corrupted every later report of the step mismatches, so this runs up to once
     * per rank under the run's lock: it sorts the reported norms once (O(n log n)) rather than
     * comparing every pair (O(n^2), O(n^3) for the step).
     */
    private static Mismatch attribute(double[] seen, int rank, int reference, double rtol) {
        double[] sorted = new double[seen.length];
        int reported = 0;
        for (double v : seen) {
            if (!Double.isNaN(v)) {
                sorted[reported++] = v;
            }
        }
        sorted = Arrays.copyOf(sorted, reported);
        Arrays.sort(sorted);
        int[] agreeing = agreeingCounts(sorted, rtol);
        int best = -1;
        int bestCount = 0;
        boolean tie = false;
        for (int i = 0; i < seen.length; i++) { // rank order, so the first rank of the largest group leads it
            if (Double.isNaN(seen[i])) {
                continue;
            }
            // how many agree depends on the value alone, so any equal value's position will do
            int count = agreeing[Arrays.binarySearch(sorted, seen[i])];
            if (count > bestCount) {
                best = i;
                bestCount = count;
                tie = false;
            } else if (count == bestCount && !agree(seen[i], seen[best], rtol)) {
                tie = true;
            }
        }
        List<Integer> suspects = new ArrayList<>();
        if (bestCount >= 2 && !tie) {
            for (int i = 0; i < seen.length; i++) {
                if (!Double.isNaN(seen[i]) && !agree(seen[i], seen[best], rtol)) {
                    suspects.add(i);
                }
            }
        }
        return new Mismatch(rank, seen[rank], reference, seen[reference], List.copyOf(suspects),
                suspects.isEmpty() ? 0 : bestCount, reported);
    }

    /**
     * For each sorted norm, how many norms agree with it (itself included). With 0 < rtol <= 1 the
     * norms agreeing with a value form one contiguous run of the sorted array, and both ends of the
     * run only move right as the value grows, so one sliding window counts them all in O(n).
     */
    private static int[] agreeingCounts(double[] sorted, double rtol) {
        int[] counts = new int[sorted.length];
        int lo = 0;
        int hi = 0;
        for (int k = 0; k < sorted.length; k++) {
            while (!agree(sorted[lo], sorted[k], rtol)) {
                lo++;
            }
            hi = Math.max(hi, k);
            while (hi + 1 < sorted.length && agree(sorted[hi + 1], sorted[k], rtol)) {
                hi++;
            }
            counts[k] = hi - lo + 1;
        }
        return counts;
    }
}
