package io.trainguard.guard.detect;

import java.util.Arrays;
import java.util.Optional;

/**
 * Data-parallel ranks all-reduce their gradients, so every rank must see the same global grad norm
 * for the same step (fairseq checks 1e-6 relative). A rank that disagrees computed on corrupted
 * data or hardware: silent data corruption, named by rank.
 *
 * <p>The norms of the last {@value #STEPS_KEPT} steps are kept in a ring of primitive arrays
 * (slot = step mod {@value #STEPS_KEPT}, one value per rank, NaN = not reported yet): this runs for
 * every report of a multi-rank run, so it allocates nothing once the arrays have grown to the world size.
 */
public final class CrossRankCheck {
    private static final int STEPS_KEPT = 16;
    private final long[] slotStep = new long[STEPS_KEPT];
    private final double[][] norms = new double[STEPS_KEPT][0];

    public CrossRankCheck() {
        Arrays.fill(slotStep, Long.MIN_VALUE);
    }

    public record Mismatch(int rank, double norm, int referenceRank, double referenceNorm) {
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
        }
        if (rank >= seen.length) {
            int old = seen.length;
            seen = norms[slot] = Arrays.copyOf(seen, Math.max(rank + 1, 2 * old));
            Arrays.fill(seen, old, seen.length, Double.NaN);
        }
        Mismatch mismatch = null;
        for (int other = 0; other < seen.length && mismatch == null; other++) {
            double ref = seen[other];
            if (other != rank && !Double.isNaN(ref)
                    && Math.abs(gradNorm - ref) > rtol * Math.max(Math.abs(ref), Math.abs(gradNorm))) {
                mismatch = new Mismatch(rank, gradNorm, other, ref);
            }
        }
        seen[rank] = gradNorm;
        return Optional.ofNullable(mismatch);
    }
}
