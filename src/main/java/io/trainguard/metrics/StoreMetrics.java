package io.trainguard.metrics;

import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.MeterRegistry;
import io.quarkus.runtime.Startup;
import io.trainguard.checkpoint.CheckpointRecord;
import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.checkpoint.CheckpointState;
import io.trainguard.guard.RunReads;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.store.SqliteJournal;
import jakarta.enterprise.context.ApplicationScoped;
import java.util.Comparator;

/**
 * Gauges read at scrape time from the journal and the checkpoint registry: whether the journal
 * commits (the "journal not writable" alert), its queue, checkpoints by state (the "checkpoint
 * rejected" alert) and the newest verification's speed (the dashboard's GB/s panel).
 */
@Startup
@ApplicationScoped
public class StoreMetrics {

    public StoreMetrics(MeterRegistry registry, SqliteJournal journal, RunReads reads, CheckpointRegistry checkpoints) {
        Gauge.builder("trainguard.journal.healthy", journal, j -> j.healthy() ? 1 : 0)
                .description("1 while the journal's writer commits, 0 after a failed commit (disk full, read-only)")
                .register(registry);
        Gauge.builder("trainguard.journal.queued", journal, SqliteJournal::queued)
                .description("Journal writes waiting for the writer").register(registry);
        for (CheckpointState s : CheckpointState.values()) {
            Gauge.builder("trainguard.checkpoints", reads, g -> count(g, checkpoints, s)).tag("state", s.name())
                    .description("Checkpoints of open runs by state").register(registry);
        }
        Gauge.builder("trainguard.checkpoint.verify.bytes.per.second", reads, g -> newestRate(g, checkpoints))
                .description("Read rate of the newest finished checkpoint verification").register(registry);
    }

    private static double count(RunReads reads, CheckpointRegistry checkpoints, CheckpointState state) {
        long n = 0;
        for (RunSnapshot r : reads.list()) {
            n += checkpoints.list(r.runId()).stream().filter(c -> c.state() == state).count();
        }
        return n;
    }

    private static double newestRate(RunReads reads, CheckpointRegistry checkpoints) {
        return reads.list().stream().flatMap(r -> checkpoints.list(r.runId()).stream())
                .filter(c -> c.verifyBytesPerSecond() > 0)
                .max(Comparator.comparing(CheckpointRecord::updatedAt)).map(CheckpointRecord::verifyBytesPerSecond).orElse(0.0);
    }
}
