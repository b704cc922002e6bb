import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.StepRecord;
import io.trainguard.store.SqliteJournal;
import java.lang.management.ManagementFactory;
import java.lang.management.ThreadMXBean;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.List;

/**
 * CPU of the journal's writer thread per step row at a paced report rate: the group commit's
 * fixed cost per commit (every 2 ms) against the cost of a row. Run by writer_cost.sh.
 */
public class WriterCost {
    public static void main(String[] args) throws Exception {
        int rows = Integer.parseInt(args[0]);
        Path dir = Files.createTempDirectory("tg-writer-cost");
        ThreadMXBean mx = ManagementFactory.getThreadMXBean();
        try (SqliteJournal journal = new SqliteJournal(dir.resolve("journal.db"), "NORMAL", 65536)) {
            Thread writer = Thread.getAllStackTraces().keySet().stream()
                    .filter(t -> t.getName().equals("trainguard-journal-writer")).findFirst().orElseThrow();
            for (int i = 1; i < args.length; i++) {
                int rate = Integer.parseInt(args[i]);
                for (int round = 0; round < 2; round++) { // the first round warms the JIT up
                    long cpu0 = mx.getThreadCpuTime(writer.getId());
                    long t0 = System.nanoTime();
                    long gap = 1_000_000_000L / rate;
                    for (int n = 0; n < rows; n++) {
                        while (System.nanoTime() < t0 + n * gap) {
                            Thread.onSpinWait();
                        }
                        StepRecord s = new StepRecord("run", 0, n, 2.5, 0.45, 3e-4, 1.0, Action.APPLY, 0, Instant.now());
                        journal.write(new JournalWrite(null, List.of(s), List.of(), false));
                    }
                    journal.write(new JournalWrite(null, List.of(), List.of())).get();
                    double us = (mx.getThreadCpuTime(writer.getId()) - cpu0) / 1000.0 / rows;
                    if (round == 1) {
                        System.out.printf("%6d reports/s: writer %.1f µs CPU per step row%n", rate, us);
                    }
                }
            }
        }
    }
}
