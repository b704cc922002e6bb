package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import io.trainguard.guard.model.Action;
import io.trainguard.metrics.GuardMetrics;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneOffset;
import org.junit.jupiter.api.Test;

/** The per-run series a restarted sidecar publishes for the runs it reloads (GuardEvents.restored). */
class HaltedRunMetricsAcrossRestartTest {

    @Test
    void aHaltedRunKeepsItsStateSeriesAfterARestart_soTheHaltedAlertStaysFiring() {
        // prevents: a restarted sidecar publishing no trainguard_run_state series for a run that was HALTED
        // (its gauges were made only by step and state events, which a halted trainer never sends): the
        // TrainguardRunHalted alert resolved while the run was still halted
        InMemoryJournal journal = new InMemoryJournal();
        GuardedRuns before = Fixtures.service(journal, new Fixtures.Checkpoints());
        before.open(setup("halted", 0, 1, null));
        Action last = null;
        for (int s = 0; s < 4; s++) {
            last = before.report(step("halted", 0, s, Double.NaN, 1)).action();
        }
        assertEquals(Action.HALT, last);

        SimpleMeterRegistry registry = new SimpleMeterRegistry();
        GuardedRuns after = new GuardedRuns(journal, new Fixtures.Checkpoints(), new GuardMetrics(registry),
                Fixtures.defaults(), Clock.fixed(Instant.parse("2026-11-27T00:00:00Z"), ZoneOffset.UTC),
                Fixtures.NANOS::get, Duration.ofSeconds(1));
        after.restore(100);
        Gauge halted = registry.find("trainguard.run.state").tag("run", "halted").tag("state", "HALTED").gauge();
        assertNotNull(halted, registry.getMeters().toString());
        assertEquals(1.0, halted.value());
        assertEquals(0.0, registry.find("trainguard.run.state").tag("run", "halted").tag("state", "HEALTHY").gauge().value());
    }
}
