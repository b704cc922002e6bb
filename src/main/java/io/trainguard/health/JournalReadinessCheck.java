package io.trainguard.health;

import io.trainguard.store.SqliteJournal;
import jakarta.enterprise.context.ApplicationScoped;
import org.eclipse.microprofile.health.HealthCheck;
import org.eclipse.microprofile.health.HealthCheckResponse;
import org.eclipse.microprofile.health.Readiness;

/** Not ready while the journal cannot commit: verdicts that must be durable would fail. */
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
        if (journal.lastFailure() != null) {
            b.withData("error", String.valueOf(journal.lastFailure().getMessage()));
        }
        return b.build();
    }
}
