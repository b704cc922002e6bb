package io.trainguard.store;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.StepRecord;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * How fast the history API's query answers over a journal of N steps (default 10^6), for
 * docs/benchmarks.md: bench/history/run.sh. Prints the median of 7 runs per query shape.
 */
public final class HistoryBench {
    public static void main(String[] args) throws Exception {
        int steps = Integer.getInteger("steps", 1_000_000);
        Path dir = Files.createTempDirectory("tg-history-bench");
        Path file = dir.resolve("journal.db");
        long t0 = System.nanoTime();
        try (SqliteJournal journal = new SqliteJournal(file, "OFF", 64)) {
            List<StepRecord> batch = new ArrayList<>();
            Instant t = Instant.now();
            for (int s = 0; s < steps; s++) {
                batch.add(new StepRecord("bench", 0, s, 2 + Math.sin(s / 999.0), 1.0, 1e-3, 65536, Action.APPLY, 5, t));
                if (batch.size() == 50_000) {
                    journal.write(new JournalWrite(null, List.copyOf(batch), List.of(), true)).get(120, TimeUnit.SECONDS);
                    batch.clear();
                }
            }
            journal.write(new JournalWrite(null, List.copyOf(batch), List.of(), true)).get(120, TimeUnit.SECONDS);
        }
        System.out.printf("wrote %d steps in %.1f s%n", steps, (System.nanoTime() - t0) / 1e9);
        try (StepHistory h = new StepHistory(file)) {
            time("whole run, 1000 points", () -> h.steps("bench", 0, null, null, 1000));
            time("whole run, 200 points", () -> h.steps("bench", 0, null, null, 200));
            time("last 10% , 1000 points", () -> h.steps("bench", 0, steps * 9L / 10, null, 1000));
            time("1000-step zoom, 1000 points", () -> h.steps("bench", 0, steps / 2L, steps / 2L + 999, 1000));
        }
    }

    private static void time(String what, Runnable r) {
        long[] ms = new long[7];
        for (int i = 0; i < ms.length; i++) {
            long t = System.nanoTime();
            r.run();
            ms[i] = (System.nanoTime() - t) / 1_000_000;
        }
        java.util.Arrays.sort(ms);
        System.out.printf("%-30s median %d ms (min %d, max %d)%n", what, ms[3], ms[0], ms[6]);
    }
}
