package io.trainguard.health;

import io.smallrye.health.api.HealthGroup;
import io.trainguard.guard.RunReads;
import io.trainguard.guard.model.RunSnapshot;
import jakarta.enterprise.context.ApplicationScoped;
import java.util.List;
import org.eclipse.microprofile.health.HealthCheck;
import org.eclipse.microprofile.health.HealthCheckResponse;

/** DOWN while any run is HALTED: the numerical health signal for the orchestrator and on-call. */
@HealthGroup("training")
@ApplicationScoped
public class TrainingHealthCheck implements HealthCheck {
    private final RunReads reads;

    public TrainingHealthCheck(RunReads reads) {
        this.reads = reads;
    }

    @Override
    public HealthCheckResponse call() {
        List<RunSnapshot> halted = reads.halted();
        var b = HealthCheckResponse.named("training").status(halted.isEmpty()).withData("halted", halted.size());
        if (!halted.isEmpty()) {
            RunSnapshot first = halted.get(0);
            b.withData("run", first.runId()).withData("step", first.haltStep()).withData("reason", first.stateReason())
                    .withData("haltedRuns", String.join(",", halted.stream().map(RunSnapshot::runId).toList()));
        }
        return b.build();
    }
}
