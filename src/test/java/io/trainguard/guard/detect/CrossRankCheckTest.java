package io.trainguard.guard.detect;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

class CrossRankCheckTest {
    @Test
    void agreeingRanks_manyStepsThroughTheRing_neverMismatch_andADisagreeingRankIsNamed() {
        // prevents: a reused ring slot comparing a step's norm with an older step's norms
        CrossRankCheck check = new CrossRankCheck();
        for (long step = 0; step < 100; step++) {
            double norm = 1.0 + step; // differs from every other step, equal across ranks
            for (int rank = 0; rank < 4; rank++) {
                boolean corrupt = step == 50 && rank == 2;
                var m = check.record(step, rank, corrupt ? norm * 1.01 : norm, 1e-6);
                // rank 2 disagrees with rank 0; rank 3 then disagrees with rank 2's recorded value
                assertEquals(step == 50 && rank >= 2, m.isPresent(), "step " + step + " rank " + rank);
                m.ifPresent(x -> {
                    assertEquals(x.rank() == 2 ? 0 : 2, x.referenceRank());
                    assertEquals(norm * 1.01, x.rank() == 2 ? x.norm() : x.referenceNorm());
                });
            }
        }
        assertTrue(check.record(7, 9, 1.0, 0).isEmpty(), "rtol 0 turns the check off");
    }

    @Test
    void corruptedRankReportingFirst_isTheSuspect_notTheHealthyRankThatReportsNext() {
        // prevents: blaming whichever rank happens to report second (the corrupted one reported first)
        CrossRankCheck check = new CrossRankCheck();
        assertTrue(check.record(3, 1, 40.2, 1e-6).isEmpty());
        var second = check.record(3, 0, 26.8, 1e-6).orElseThrow();
        assertEquals(java.util.List.of(), second.suspects(), "two ranks that disagree cannot tell which is corrupted");
        var third = check.record(3, 2, 26.8, 1e-6).orElseThrow();
        assertEquals(java.util.List.of(1), third.suspects());
        assertEquals(2, third.agreeing());
        assertEquals(3, third.reported());
    }

    @Test
    void manyRanks_oneCorruptedRank_isNamed_byEveryLaterMismatch() {
        // prevents: attribution comparing every pair of ranks for each mismatching report (O(n^3) per
        // step under the run's lock). With the corrupted rank reporting first, all 511 later reports
        // of the step mismatch; no timing assertion, the old code merely made this test slow.
        int ranks = 512;
        CrossRankCheck check = new CrossRankCheck();
        assertTrue(check.record(9, 0, 3.0 * 1.01, 1e-6).isEmpty());
        CrossRankCheck.Mismatch last = null;
        for (int rank = 1; rank < ranks; rank++) {
            last = check.record(9, rank, 3.0, 1e-6).orElseThrow();
            assertEquals(0, last.referenceRank());
            assertEquals(rank == 1 ? List.of() : List.of(0), last.suspects(), "rank " + rank);
        }
        assertEquals(ranks - 1, last.agreeing());
        assertEquals(ranks, last.reported());

        // a corrupted rank in the middle; healthy norms differ by less than the tolerance
        for (int rank = 0; rank < ranks; rank++) {
            double norm = rank == 300 ? 5.0 * 1.001 : 5.0 * (1 + (rank % 3) * 1e-7);
            var m = check.record(10, rank, norm, 1e-6);
            assertEquals(rank >= 300, m.isPresent(), "rank " + rank);
            if (rank == ranks - 1) {
                assertEquals(List.of(300), m.orElseThrow().suspects());
                assertEquals(ranks - 1, m.orElseThrow().agreeing());
            }
        }
    }

    @Test
    void attribution_matchesComparingEveryPair() {
        // prevents: the sorted sliding window naming other suspects, or seeing a tie where comparing
        // every pair of ranks does not (clusters closer and farther than the tolerance, ties, zeros)
        Random random = new Random(11);
        double rtol = 1e-3;
        for (long step = 0; step < 2000; step++) {
            CrossRankCheck check = new CrossRankCheck();
            int ranks = 2 + random.nextInt(9);
            double[] seen = new double[ranks];
            java.util.Arrays.fill(seen, Double.NaN);
            for (int rank = 0; rank < ranks; rank++) {
                double norm = random.nextInt(8) == 0 ? 0.0
                        : (1 + random.nextInt(3) * 0.0015) * (1 + (random.nextDouble() - 0.5) * 1.5e-3);
                var m = check.record(step, rank, norm, rtol);
                seen[rank] = norm;
                if (m.isPresent()) {
                    assertEquals(pairwiseSuspects(seen, rtol), m.get().suspects(), "step " + step + " rank " + rank);
                }
            }
        }
    }

    /** The attribution by comparing every pair: ranks outside the one largest agreeing group. */
    private static List<Integer> pairwiseSuspects(double[] seen, double rtol) {
        int best = -1;
        int bestCount = 0;
        boolean tie = false;
        for (int i = 0; i < seen.length; i++) {
            if (Double.isNaN(seen[i])) {
                continue;
            }
            int count = 0;
            for (double v : seen) {
                count += !Double.isNaN(v) && agree(seen[i], v, rtol) ? 1 : 0;
            }
            if (count > bestCount) {
                best = i;
                bestCount = count;
                tie = false;
            } else if (count == bestCount && !agree(seen[i], seen[best], rtol)) {
                tie = true;
            }
        }
        List<Integer> suspects = new ArrayList<>();
        for (int i = 0; bestCount >= 2 && !tie && i < seen.length; i++) {
            if (!Double.isNaN(seen[i]) && !agree(seen[i], seen[best], rtol)) {
                suspects.add(i);
            }
        }
        return suspects;
    }

    private static boolean agree(double a, double b, double rtol) {
        return Math.abs(a - b) <= rtol * Math.max(Math.abs(a), Math.abs(b));
    }
}
