package io.trainguard.store;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.StepRecord;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The history query over a journal of 10^6 steps written by the real journal writer. */
class StepHistoryTest {
    static final int STEPS = 1_000_000;
    static final long SPIKE_STEP = 612_345;
    static final long DIP_STEP = 77_777;
    static final long NAN_STEP = 400_001;

    @TempDir
    static Path dir;
    static StepHistory history;

    @BeforeAll
    static void writeMillionSteps() throws Exception {
        Path file = dir.resolve("journal.db");
        try (SqliteJournal journal = new SqliteJournal(file, "OFF", 64)) {
            Instant t = Instant.parse("2026-11-29T00:00:00Z");
            List<StepRecord> batch = new ArrayList<>();
            for (int s = 0; s < STEPS; s++) {
                double loss = 2.0 + Math.sin(s / 1000.0) * 0.1;
                Action action = Action.APPLY;
                if (s == SPIKE_STEP) {
                    loss = 900.0;
                    action = Action.CLIP;
                } else if (s == DIP_STEP) {
                    loss = 0.001;
                } else if (s == NAN_STEP) {
                    loss = Double.NaN;
                    action = Action.SKIP;
                }
                batch.add(new StepRecord("big", 0, s, loss, 1.0 + (s % 7) * 0.01, 1e-3, 65536, action, 5.0, t));
                if (batch.size() == 50_000) {
                    journal.write(new JournalWrite(null, List.copyOf(batch), List.of(), true)).get(60, TimeUnit.SECONDS);
                    batch.clear();
                }
            }
        }
        history = new StepHistory(file);
    }

    @AfterAll
    static void close() {
        history.close();
    }

    @Test
    void steps_millionStepsTo500Points_atMost500BucketsWithExtremesKept() {
        // prevents: a chart that averages a one-step spike, dip or NaN away
        StepHistory.Range r = history.steps("big", 0, null, null, 500);
        assertTrue(r.buckets().size() <= 500, "buckets: " + r.buckets().size());
        assertEquals(STEPS, r.reports());
        assertEquals(0, r.fromStep());
        assertEquals(STEPS - 1, r.toStep());
        StepHistory.Bucket spike = bucketOf(r, SPIKE_STEP);
        assertEquals(900.0, spike.lossMax());
        assertEquals(1, spike.clips());
        assertEquals(0.001, bucketOf(r, DIP_STEP).lossMin());
        StepHistory.Bucket nan = bucketOf(r, NAN_STEP);
        assertEquals(1, nan.nonFiniteLoss());
        assertEquals(1, nan.skips());
        double globalMax = r.buckets().stream().mapToDouble(StepHistory.Bucket::lossMax).max().orElseThrow();
        assertEquals(900.0, globalMax);
    }

    @Test
    void steps_rangeOfTenSteps_oneBucketPerStepWithExactValues() {
        // prevents: a zoomed-in view that still merges steps
        StepHistory.Range r = history.steps("big", 0, NAN_STEP - 5, NAN_STEP + 4, 1000);
        assertEquals(10, r.buckets().size());
        assertEquals(1, r.bucketWidth());
        StepHistory.Bucket nan = r.buckets().get(5);
        assertEquals(NAN_STEP, nan.firstStep());
        assertNull(nan.lossMax());
        assertEquals(1, nan.nonFiniteLoss());
    }

    @Test
    void steps_unknownRankOrEmptyRange_noBuckets() {
        // prevents: an empty run answering with an error instead of an empty chart
        assertTrue(history.steps("big", 3, null, null, 100).buckets().isEmpty());
        assertTrue(history.steps("big", 0, 5_000_000L, 6_000_000L, 100).buckets().isEmpty());
    }

    @Test
    void refresh_newRowsSinceLastRead_takesInOnlyThoseAndTheChartSeesThem(@TempDir Path own) throws Exception {
        // prevents: a background warm-up that re-reads the whole run every pass, or whose rollup the chart ignores
        try (SqliteJournal journal = new SqliteJournal(own.resolve("journal.db"), "OFF", 64);
                StepHistory h = new StepHistory(own.resolve("journal.db"))) {
            journal.write(new JournalWrite(null, rows(0, 1000, 2.0), List.of(), true)).get(60, TimeUnit.SECONDS);
            assertEquals(1000, h.refresh("warm", 0));
            assertEquals(0, h.refresh("warm", 0));
            journal.write(new JournalWrite(null, rows(1000, 1010, 77.0), List.of(), true)).get(60, TimeUnit.SECONDS);
            assertEquals(10, h.refresh("warm", 0));
            StepHistory.Range r = h.steps("warm", 0, null, null, 10); // 101-step buckets: served from the rollup
            assertEquals(1010, r.reports());
            assertEquals(77.0, r.buckets().get(r.buckets().size() - 1).lossMax());
            assertEquals(0, h.refresh("other", 0));
        }
    }

    @Test
    void steps_stepsReportedWithoutALoss_areNotCountedAsNonFiniteLossesButANaNLossStillIs(@TempDir Path own) throws Exception {
        // prevents: a run that reports no loss (guard.step(k, None), a Trainer with label smoothing) drawn
        // with a red "non-finite loss" tick at every step: the journal stores both as NULL
        try (SqliteJournal journal = new SqliteJournal(own.resolve("journal.db"), "OFF", 64);
                StepHistory h = new StepHistory(own.resolve("journal.db"))) {
            List<StepRecord> steps = new ArrayList<>(rows(0, 1000, Double.NaN));
            steps.add(new StepRecord("warm", 0, 1000, Double.NaN, 1.0, 1e-3, 65536, Action.SKIP, 5.0,
                    Instant.parse("2026-11-29T00:00:00Z")));
            journal.write(new JournalWrite(null, steps, List.of(), true)).get(60, TimeUnit.SECONDS);
            for (int points : new int[] {5, 1001}) { // the rollup's buckets and SQLite's per-step rows
                List<StepHistory.Bucket> b = h.steps("warm", 0, null, null, points).buckets();
                assertEquals(1, b.stream().mapToInt(StepHistory.Bucket::nonFiniteLoss).sum(), "points " + points);
                assertEquals(1, bucketOf(new StepHistory.Range("warm", 0, 0, 1000, 1, 0, b), 1000).nonFiniteLoss());
            }
        }
    }

    private static List<StepRecord> rows(int from, int to, double loss) {
        List<StepRecord> out = new ArrayList<>();
        for (int s = from; s < to; s++) {
            out.add(new StepRecord("warm", 0, s, loss, 1.0, 1e-3, 65536, Action.APPLY, 5.0, Instant.parse("2026-11-29T00:00:00Z")));
        }
        return out;
    }

    private static StepHistory.Bucket bucketOf(StepHistory.Range r, long step) {
        return r.buckets().stream().filter(b -> b.firstStep() <= step && step <= b.lastStep()).findFirst().orElseThrow();
    }
}
