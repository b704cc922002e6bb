package io.trainguard.health;

import io.trainguard.store.SqliteJournal;
import jakarta.enterprise.context.ApplicationScoped;
import org.eclipse.microprofile.health.HealthCheck;
import org.eclipse.microprofile.health.HealthCheckResponse;
import org.eclipse.microprofile.health.Readiness;

/**
 * Not ready while the journal cannot commit: verdicts that must be durable would fail. The data
 * says why and what to do; the journal retries by itself once a second, so readiness turns UP
 * again as soon as the disk has room or is writable, without a restart.
 */
@Readiness
@ApplicationScoped
public class JournalReadinessCheck implements HealthCheck {
    private final SqliteJournal journal;

    public JournalReadinessCheck(SqliteJournal journal) {
        this.journal = journal;
    }

    @Override
    public HealthCheckResponse call() {
        var b = HealthCheckResponse.named("journal").status(journal.healthy()).withData("queued", journal.queued());
        Throwable failure = journal.lastFailure();
        if (!journal.writerAlive()) {
            b.withData("reason", "the journal writer has stopped; the sidecar must be restarted");
        } else if (failure != null) {
            b.withData("error", String.valueOf(failure.getMessage()))
                    .withData("reason", "the journal cannot commit (disk full or read-only?): course-changing verdicts "
                            + "fail with UNAVAILABLE until it can; free space on the journal volume "
                            + "(trainguard.journal.path), the sidecar retries every second");
        }
        return b.build();
    }
}
