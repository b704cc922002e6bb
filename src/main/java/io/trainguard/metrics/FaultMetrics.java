package io.trainguard.metrics;

import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.MeterRegistry;
import jakarta.enterprise.context.ApplicationScoped;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * {@code trainguard_suspect_device{run,device}}: 1 while the device is suspect (too many transient
 * faults), 0 once cleared. A gauge per device that ever became suspect (a handful at most).
 */
@ApplicationScoped
public class FaultMetrics {
    private final MeterRegistry registry;
    private final Map<String, AtomicInteger> suspect = new ConcurrentHashMap<>();

    public FaultMetrics(MeterRegistry registry) {
        this.registry = registry;
    }

    public void suspectChanged(String runId, String device, boolean isSuspect) {
        suspect.computeIfAbsent(runId + "\u0000" + device, k -> {
            AtomicInteger v = new AtomicInteger();
            Gauge.builder("trainguard.suspect.device", v, AtomicInteger::get).tag("run", runId).tag("device", device)
                    .description("1 while the device is suspect: too many transient faults (replays came out clean)")
                    .register(registry);
            return v;
        }).set(isSuspect ? 1 : 0);
    }
}
