package io.trainguard.guard.detect;

import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Optional;

/**
 * Data-parallel ranks all-reduce their gradients, so every rank must see the same global grad norm
 * for the same step (fairseq checks 1e-6 relative). A rank that disagrees computed on corrupted
 * data or hardware: silent data corruption, named by rank.
 */
public final class CrossRankCheck {
    private static final int STEPS_KEPT = 16;
    private final Map<Long, Map<Integer, Double>> normsByStep = new LinkedHashMap<>() {
        @Override
        protected boolean removeEldestEntry(Map.Entry<Long, Map<Integer, Double>> eldest) {
            return size() > STEPS_KEPT;
        }
    };

    public record Mismatch(int rank, double norm, int referenceRank, double referenceNorm) {
    }

    /** Records a finite norm and returns the first disagreement with a rank already seen for this step. */
    public synchronized Optional<Mismatch> record(long step, int rank, double gradNorm, double rtol) {
        if (rtol <= 0 || !Double.isFinite(gradNorm)) {
            return Optional.empty();
        }
        Map<Integer, Double> seen = normsByStep.computeIfAbsent(step, s -> new HashMap<>());
        Optional<Mismatch> mismatch = Optional.empty();
        for (Map.Entry<Integer, Double> other : seen.entrySet()) {
            double ref = other.getValue();
            if (other.getKey() != rank && Math.abs(gradNorm - ref) > rtol * Math.max(Math.abs(ref), Math.abs(gradNorm))) {
                mismatch = Optional.of(new Mismatch(rank, gradNorm, other.getKey(), ref));
                break;
            }
        }
        seen.put(rank, gradNorm);
        return mismatch;
    }
}
