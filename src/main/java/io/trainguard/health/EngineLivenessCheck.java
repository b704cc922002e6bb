package io.trainguard.health;

import io.trainguard.guard.GuardService;
import io.trainguard.store.SqliteJournal;
import jakarta.enterprise.context.ApplicationScoped;
import org.eclipse.microprofile.health.HealthCheck;
import org.eclipse.microprofile.health.HealthCheckResponse;
import org.eclipse.microprofile.health.Liveness;

/** The sidecar itself is alive when its engine answers and the journal writer thread runs. */
@Liveness
@ApplicationScoped
public class EngineLivenessCheck implements HealthCheck {
    private final GuardService guard;
    private final SqliteJournal journal;

    public EngineLivenessCheck(GuardService guard, SqliteJournal journal) {
        this.guard = guard;
        this.journal = journal;
    }

    @Override
    public HealthCheckResponse call() {
        return HealthCheckResponse.named("engine").status(journal.healthy())
                .withData("runs", guard.list().size()).build();
    }
}
