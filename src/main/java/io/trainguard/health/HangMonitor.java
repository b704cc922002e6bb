package io.trainguard.health;

import io.quarkus.runtime.ShutdownEvent;
import io.quarkus.runtime.StartupEvent;
import io.trainguard.guard.HangSweep;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.event.Observes;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.jboss.logging.Logger;

/** Looks for hung ranks once a second so a hang is journaled even when nobody probes the health group. */
@ApplicationScoped
public class HangMonitor {
    private static final Logger LOG = Logger.getLogger(HangMonitor.class);
    private final HangSweep sweep;
    private ScheduledExecutorService timer;

    public HangMonitor(HangSweep sweep) {
        this.sweep = sweep;
    }

    void start(@Observes StartupEvent event) {
        timer = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "trainguard-hang-monitor");
            t.setDaemon(true);
            return t;
        });
        timer.scheduleWithFixedDelay(this::check, 1, 1, TimeUnit.SECONDS);
    }

    private void check() {
        try {
            sweep.recordHangs();
        } catch (RuntimeException e) {
            LOG.warn("hang check failed: " + e.getMessage());
        }
    }

    void stop(@Observes ShutdownEvent event) {
        if (timer != null) {
            timer.shutdownNow();
        }
    }
}
