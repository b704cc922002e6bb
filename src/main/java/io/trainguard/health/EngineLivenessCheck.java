package io.trainguard.health;

import io.trainguard.guard.RunReads;
import io.trainguard.store.SqliteJournal;
import jakarta.enterprise.context.ApplicationScoped;
import org.eclipse.microprofile.health.HealthCheck;
import org.eclipse.microprofile.health.HealthCheckResponse;
import org.eclipse.microprofile.health.Liveness;

/**
 * Alive = the process can serve: the engine answers from memory and the journal's writer thread
 * runs. A journal that cannot commit (full or read-only disk) is NOT a liveness failure: a restart
 * does not free the disk, it only loses the in-memory state and turns a degraded sidecar into a
 * crash loop. Readiness ({@link JournalReadinessCheck}) reports that case.
 */
@Liveness
@ApplicationScoped
public class EngineLivenessCheck implements HealthCheck {
    private final RunReads reads;
    private final SqliteJournal journal;

    public EngineLivenessCheck(RunReads reads, SqliteJournal journal) {
        this.reads = reads;
        this.journal = journal;
    }

    @Override
    public HealthCheckResponse call() {
        return HealthCheckResponse.named("engine").status(journal.writerAlive())
                .withData("runs", reads.list().size()).withData("journalWritable", journal.healthy()).build();
    }
}
