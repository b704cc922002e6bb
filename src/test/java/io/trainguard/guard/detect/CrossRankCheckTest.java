package io.trainguard.guard.detect;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

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
}
