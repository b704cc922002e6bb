package io.trainguard.metrics;

import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Timer;
import io.trainguard.guard.GuardEvents;
import io.micrometer.core.instrument.Meter;
import io.quarkus.runtime.Startup;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.Verdict;
import jakarta.enterprise.context.ApplicationScoped;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.EnumMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * Prometheus view of the engine. Labels stay low-cardinality: action, source, kind, and the run id
 * for the per-run gauges (a sidecar serves one trainer pod, so a handful of runs at most).
 *
 * <p>Created at startup, not on the first event: every counter exists (at zero) from the first
 * scrape, so {@code rate(trainguard_skips_total[5m])} reads 0, not "no data". A closed run's
 * gauges are removed. The run state is a label ({@code trainguard_run_state{state="HALTED"} 1}),
 * one series per state, so alerts compare names, not numbers that change when the enum does.
 */
@Startup
@ApplicationScoped
public class GuardMetrics implements GuardEvents {

    private final MeterRegistry registry;
    private final Counter steps;
    private final Map<Action, Counter> verdicts = new EnumMap<>(Action.class);
    private final Map<String, Counter> nonFinite = new ConcurrentHashMap<>();
    private final Map<IncidentKind, Counter> incidents = new EnumMap<>(IncidentKind.class);
    private final Counter rollbacks;
    private final Counter halts;
    private final Counter skips;
    private final Counter clips;
    private final Timer latency;
    private final Map<String, RunGauges> runs = new ConcurrentHashMap<>();

    /** Current values per run, read by the gauges. */
    static final class RunGauges {
        volatile double loss = Double.NaN;
        volatile double gradNorm = Double.NaN;
        volatile double clipThreshold;
        volatile RunState state = RunState.HEALTHY;
        final List<Meter> meters = new ArrayList<>();
    }

    /** About a dozen buckets from 50 µs to 5 s: enough to see the p99 move, not a hundred series. */
    static final Duration[] LATENCY_BUCKETS = {
        Duration.ofNanos(50_000), Duration.ofNanos(100_000), Duration.ofNanos(250_000), Duration.ofNanos(500_000),
        Duration.ofMillis(1), Duration.ofMillis(2), Duration.ofMillis(5), Duration.ofMillis(10), Duration.ofMillis(25),
        Duration.ofMillis(100), Duration.ofMillis(500), Duration.ofSeconds(5)};

    public GuardMetrics(MeterRegistry registry) {
        this.registry = registry;
        steps = Counter.builder("trainguard.steps").description("Step reports decided").register(registry);
        for (Action a : Action.values()) {
            verdicts.put(a, Counter.builder("trainguard.verdicts").description("Verdicts by action")
                    .tag("action", a.name()).register(registry));
        }
        for (IncidentKind k : IncidentKind.values()) {
            incidents.put(k, Counter.builder("trainguard.incidents").description("Incidents by kind")
                    .tag("kind", k.name()).register(registry));
        }
        for (String source : new String[] {"loss", "grad", "module"}) {
            nonFinite.put(source, Counter.builder("trainguard.nonfinite").description("Non-finite events by source")
                    .tag("source", source).register(registry));
        }
        rollbacks = Counter.builder("trainguard.rollbacks").description("Rollbacks ordered").register(registry);
        halts = Counter.builder("trainguard.halts").description("Runs halted").register(registry);
        skips = Counter.builder("trainguard.skips").description("Steps whose update was skipped").register(registry);
        clips = Counter.builder("trainguard.clips").description("Steps whose gradients were clipped").register(registry);
        latency = Timer.builder("trainguard.verdict.latency").description("Time to decide a verdict, journal wait included")
                .serviceLevelObjectives(LATENCY_BUCKETS).register(registry);
    }

    @Override
    public void stepDecided(StepReport report, Verdict verdict, long decisionNanos) {
        steps.increment();
        verdicts.get(verdict.action()).increment();
        latency.record(decisionNanos, TimeUnit.NANOSECONDS);
        if (verdict.action() == Action.SKIP) {
            skips.increment();
        } else if (verdict.action() == Action.CLIP) {
            clips.increment();
        }
        if (verdict.runState() == RunState.CLOSED) {
            return;
        }
        RunGauges g = gauges(report.runId());
        g.loss = report.loss();
        g.gradNorm = report.gradNorm();
        g.clipThreshold = verdict.clipThreshold();
        g.state = verdict.runState();
    }

    @Override
    public void incident(Incident incident) {
        incidents.get(incident.kind()).increment();
        switch (incident.kind()) {
            case NON_FINITE_LOSS -> nonFinite.get("loss").increment();
            case NON_FINITE_GRAD -> nonFinite.get("grad").increment();
            case NON_FINITE_MODULE -> nonFinite.get("module").increment();
            default -> {
            }
        }
    }

    @Override
    public void stateChanged(String runId, RunState from, RunState to, String reason) {
        if (to == RunState.CLOSED) {
            RunGauges gone = runs.remove(runId);
            if (gone != null) {
                gone.meters.forEach(registry::remove);
            }
        } else {
            gauges(runId).state = to;
        }
        if (to == RunState.ROLLING_BACK) {
            rollbacks.increment();
        } else if (to == RunState.HALTED) {
            halts.increment();
        }
    }

    @Override
    public void restored(String runId, RunState state) {
        // before, a HALTED run had no series after a restart, and TrainguardRunHalted resolved while it was halted
        gauges(runId).state = state;
    }

    private RunGauges gauges(String runId) {
        return runs.computeIfAbsent(runId, id -> {
            RunGauges g = new RunGauges();
            g.meters.add(Gauge.builder("trainguard.run.loss", g, x -> x.loss).tag("run", id).description("Last reported loss").register(registry));
            g.meters.add(Gauge.builder("trainguard.run.grad.norm", g, x -> x.gradNorm).tag("run", id)
                    .description("Last global grad norm").register(registry));
            g.meters.add(Gauge.builder("trainguard.run.clip.threshold", g, x -> x.clipThreshold).tag("run", id)
                    .description("Clip threshold of the last verdict (0 = no clipping)").register(registry));
            for (RunState s : RunState.values()) {
                if (s != RunState.CLOSED) {
                    g.meters.add(Gauge.builder("trainguard.run.state", g, x -> x.state == s ? 1 : 0).tag("run", id)
                            .tag("state", s.name()).description("1 for the run's current state, 0 for the others")
                            .register(registry));
                }
            }
            return g;
        });
    }

    /** For tests and the run page: the runs that currently have gauges. */
    public java.util.Set<String> runsWithGauges() {
        return java.util.Set.copyOf(runs.keySet());
    }
}
