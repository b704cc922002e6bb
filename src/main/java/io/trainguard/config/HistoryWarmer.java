package io.trainguard.config;

import io.quarkus.runtime.ShutdownEvent;
import io.quarkus.runtime.StartupEvent;
import io.trainguard.guard.RunReads;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.RunState;
import io.trainguard.store.StepHistory;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.event.Observes;
import java.util.Comparator;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import org.jboss.logging.Logger;

/**
 * Keeps the history rollups of open runs current in the background. Without it the first look at
 * a run's page (or whole-run history) reads every step row the run has written: seconds for a
 * 10^6-step run (docs/benchmarks.md), paid by the person waiting. With it, a restart reads each
 * open run once in the background and, while runs train, each pass takes in only the new rows.
 * Warms rank 0 (what the page shows by default) of the most recently updated open runs, fewer
 * than StepHistory keeps, so warming never evicts what a person is looking at.
 */
@ApplicationScoped
public class HistoryWarmer {
    private static final Logger LOG = Logger.getLogger(HistoryWarmer.class);
    static final int MAX_RUNS = 16;
    static final long PERIOD_SECONDS = 5;
    private final RunReads runs;
    private final StepHistory history;
    private ScheduledExecutorService timer;

    public HistoryWarmer(RunReads runs, StepHistory history) {
        this.runs = runs;
        this.history = history;
    }

    void start(@Observes StartupEvent event) {
        timer = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "trainguard-history-warmer");
            t.setDaemon(true);
            t.setPriority(Thread.MIN_PRIORITY);
            return t;
        });
        timer.scheduleWithFixedDelay(this::warm, 1, PERIOD_SECONDS, TimeUnit.SECONDS);
    }

    private void warm() {
        try {
            runs.list().stream().filter(r -> r.state() != RunState.CLOSED)
                    .sorted(Comparator.comparing(RunSnapshot::updatedTime).reversed()).limit(MAX_RUNS)
                    .forEach(r -> history.refresh(r.runId(), 0));
        } catch (RuntimeException e) {
            LOG.warn("history warm-up failed (the page reads the rows itself): " + e.getMessage());
        }
    }

    void stop(@Observes ShutdownEvent event) {
        if (timer != null) {
            timer.shutdownNow();
        }
    }
}
