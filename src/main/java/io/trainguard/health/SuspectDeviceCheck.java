package io.trainguard.health;

import io.smallrye.health.api.HealthGroup;
import io.trainguard.fault.FaultLedger;
import jakarta.enterprise.context.ApplicationScoped;
import java.util.List;
import org.eclipse.microprofile.health.HealthCheck;
import org.eclipse.microprofile.health.HealthCheckResponse;

/**
 * DOWN while a device of a run is suspect: replays of its faulty steps came out clean too often
 * (silent data corruption, a failing part). In the trainer group, so the trainer's liveness probe
 * restarts the trainer; a scheduler reading the data can move the job off the device. Cleared when a
 * new trainer process opens the run.
 */
@HealthGroup("trainer")
@ApplicationScoped
public class SuspectDeviceCheck implements HealthCheck {
    private final FaultLedger faults;

    public SuspectDeviceCheck(FaultLedger faults) {
        this.faults = faults;
    }

    @Override
    public HealthCheckResponse call() {
        List<FaultLedger.Tally> suspects = faults.suspects();
        var b = HealthCheckResponse.named("suspect-device").status(suspects.isEmpty()).withData("suspect", suspects.size());
        if (!suspects.isEmpty()) {
            FaultLedger.Tally t = suspects.get(0);
            b.withData("run", t.runId()).withData("device", t.device()).withData("transients", t.transients())
                    .withData("reason", t.transients() + " transient faults on " + t.device() + " (threshold "
                            + faults.suspectThreshold() + "): suspect silent data corruption; move the job off this device");
        }
        return b.build();
    }
}
