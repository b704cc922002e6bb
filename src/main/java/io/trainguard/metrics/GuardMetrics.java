package io.trainguard.metrics;

import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Timer;
import io.trainguard.guard.GuardEvents;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.Verdict;
import jakarta.enterprise.context.ApplicationScoped;
import java.time.Duration;
import java.util.EnumMap;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;

/**
 * Prometheus view of the engine. Labels stay low-cardinality: action, source, kind, and the run id
 * for the per-run gauges (a sidecar serves one trainer pod, so a handful of runs at most).
 */
@ApplicationScoped
public class GuardMetrics implements GuardEvents {

    private final MeterRegistry registry;
    private final Counter steps;
    private final Map<Action, Counter> verdicts = new EnumMap<>(Action.class);
    private final Map<String, Counter> nonFinite = new ConcurrentHashMap<>();
    private final Map<IncidentKind, Counter> incidents = new EnumMap<>(IncidentKind.class);
    private final Counter rollbacks;
    private final Counter halts;
    private final Timer latency;
    private final Map<String, RunGauges> runs = new ConcurrentHashMap<>();

    /** Current values per run, read by the gauges. */
    static final class RunGauges {
        volatile double loss = Double.NaN;
        volatile double gradNorm = Double.NaN;
        volatile double clipThreshold;
        volatile double state;
    }

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
        latency = Timer.builder("trainguard.verdict.latency").description("Time to decide a verdict, journal wait included")
                .publishPercentileHistogram().minimumExpectedValue(Duration.ofNanos(1_000))
                .maximumExpectedValue(Duration.ofSeconds(5)).register(registry);
    }

    @Override
    public void stepDecided(StepReport report, Verdict verdict, long decisionNanos) {
        steps.increment();
        verdicts.get(verdict.action()).increment();
        latency.record(decisionNanos, TimeUnit.NANOSECONDS);
        RunGauges g = gauges(report.runId());
        g.loss = report.loss();
        g.gradNorm = report.gradNorm();
        g.clipThreshold = verdict.clipThreshold();
        g.state = verdict.runState().ordinal();
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
        gauges(runId).state = to.ordinal();
        if (to == RunState.ROLLING_BACK) {
            rollbacks.increment();
        } else if (to == RunState.HALTED) {
            halts.increment();
        }
    }

    private RunGauges gauges(String runId) {
        return runs.computeIfAbsent(runId, id -> {
            RunGauges g = new RunGauges();
            Gauge.builder("trainguard.run.loss", g, x -> x.loss).tag("run", id).description("Last reported loss").register(registry);
            Gauge.builder("trainguard.run.grad.norm", g, x -> x.gradNorm).tag("run", id).description("Last global grad norm").register(registry);
            Gauge.builder("trainguard.run.clip.threshold", g, x -> x.clipThreshold).tag("run", id)
                    .description("Clip threshold of the last verdict (0 = no clipping)").register(registry);
            Gauge.builder("trainguard.run.state", g, x -> x.state).tag("run", id)
                    .description("Run state: 0 HEALTHY, 1 DEGRADED, 2 ROLLING_BACK, 3 HALTED, 4 CLOSED").register(registry);
            return g;
        });
    }
}
