package io.trainguard.health;

import io.smallrye.health.api.HealthGroup;
import io.trainguard.guard.HangSweep;
import io.trainguard.guard.model.HangReport;
import jakarta.enterprise.context.ApplicationScoped;
import java.util.List;
import org.eclipse.microprofile.health.HealthCheck;
import org.eclipse.microprofile.health.HealthCheckResponse;

/**
 * DOWN when a trainer rank has been silent longer than its learned phase time allows. Point the
 * trainer container's liveness probe here and Kubernetes restarts a hung trainer.
 */
@HealthGroup("trainer")
@ApplicationScoped
public class TrainerHangCheck implements HealthCheck {
    private final HangSweep sweep;

    public TrainerHangCheck(HangSweep sweep) {
        this.sweep = sweep;
    }

    @Override
    public HealthCheckResponse call() {
        List<HangReport> hangs = sweep.hangs();
        var b = HealthCheckResponse.named("trainer").status(hangs.isEmpty()).withData("hung", hangs.size());
        if (!hangs.isEmpty()) {
            HangReport h = hangs.get(0);
            b.withData("run", h.runId()).withData("rank", h.rank()).withData("step", h.lastStep())
                    .withData("phase", h.phase().name()).withData("silentSeconds", h.silentFor().toSeconds())
                    .withData("allowedSeconds", h.allowed().toSeconds());
        }
        return b.build();
    }
}
