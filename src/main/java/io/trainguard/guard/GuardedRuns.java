package io.trainguard.guard;

import io.trainguard.guard.detect.PreflightAudit;
import io.trainguard.guard.model.AuditFinding;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.LocalBounds;
import io.trainguard.guard.model.Phase;
import io.trainguard.guard.model.RunSetup;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.model.StepRecord;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.ValidationAudit;
import io.trainguard.guard.model.Verdict;
import io.trainguard.guard.policy.Policy;
import io.trainguard.guard.run.Decision;
import io.trainguard.guard.run.Joined;
import io.trainguard.guard.run.RunDecider;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutionException;
import java.util.function.LongSupplier;
import java.util.function.UnaryOperator;

/**
 * The runs this sidecar guards, and the one way to change them: keeps one {@link RunDecider} per
 * run (which decides each step's verdict), applies what it decided after the run's lock (the
 * journal write, checkpoint-state changes in the same transaction, events; course-changing
 * verdicts are durable before they are returned) and tells observers. Plain Java; the gRPC and
 * REST adapters call it, nothing else holds run state. Reads are {@link RunReads}, the hang
 * sweep is {@link HangSweep}.
 */
public final class GuardedRuns {

    public record OpenResult(RunSnapshot run, boolean resumed, List<AuditFinding> findings, LocalBounds bounds) {
    }

    public record ValidationGate(boolean allowed, String reason) {
    }

    private final Map<String, RunDecider> runs = new ConcurrentHashMap<>();
    private final Journal journal;
    private final CheckpointCatalog checkpoints;
    private final GuardEvents events;
    private final Policy defaults;
    private final Clock clock;
    private final LongSupplier nanoTime;
    private final DurableWrites durable;
    private final PreflightAudit preflight = new PreflightAudit();

    public GuardedRuns(Journal journal, CheckpointCatalog checkpoints, GuardEvents events, Policy defaults, Clock clock,
                        LongSupplier nanoTime, Duration durableTimeout) {
        this.journal = journal;
        this.checkpoints = checkpoints;
        this.events = events;
        this.defaults = defaults;
        this.clock = clock;
        this.nanoTime = nanoTime;
        this.durable = new DurableWrites(journal, durableTimeout);
    }

    /** The journal the runs are written to (RunReads reads it). */
    Journal journal() {
        return journal;
    }

    /** The durable-write waits, shared with RunReads' read barrier. */
    DurableWrites durableWrites() {
        return durable;
    }

    /** Reloads every run from the journal and replays recent steps so statistics continue where they were. */
    public int restore(int replaySteps) {
        int restored = 0;
        for (RunSnapshot s : journal.loadRuns()) {
            RunDecider g = RunDecider.restore(s, journal::nextIncidentId);
            if (s.state() != RunState.CLOSED) {
                // one query per run, only ranks that reported: start time does not grow with world size
                Map<Integer, List<StepRecord>> byRank = journal.recentStepsByRank(s.runId(), s.worldSize(), replaySteps);
                Map<Integer, Set<Long>> faults = byRank.isEmpty() ? Map.of()
                        : journal.incidentStepsByRank(s.runId(), IncidentKind.STEP_FAULTS, oldestStep(byRank));
                byRank.forEach((rank, steps) -> g.replay(rank, steps, faults.getOrDefault(rank, Set.of()),
                        nanoTime.getAsLong()));
            }
            runs.put(s.runId(), g);
            checkpoints.configure(s.runId(), s.policy().knownGoodHealthySteps());
            if (s.state() != RunState.CLOSED) {
                events.restored(s.runId(), s.state());
            }
            restored++;
        }
        return restored;
    }

    private static long oldestStep(Map<Integer, List<StepRecord>> byRank) {
        return byRank.values().stream().flatMap(List::stream).mapToLong(StepRecord::step).min().orElse(0);
    }

    // ------------------------------------------------------------------ runs

    public OpenResult open(RunSetup setup) {
        RunChecks.opening(setup);
        Instant now = clock.instant();
        RunDecider existing = runs.get(setup.runId());
        Policy policy = (existing != null ? existing.policy() : defaults).toBuilder().let(setup.policyOverrides());
        List<AuditFinding> findings = new ArrayList<>(policy.preflightMode() == AuditMode.OFF ? List.of()
                : preflight.audit(setup.precision(), setup.parameterGroups()));
        if (policy.preflightMode() == AuditMode.REFUSE && findings.stream().anyMatch(f -> f.severity().ordinal() >= Severity.ERROR.ordinal())) {
            StringBuilder msg = new StringBuilder("pre-flight audit refused run '" + setup.runId() + "' (rank " + setup.rank() + "):");
            findings.stream().filter(f -> f.severity().ordinal() >= Severity.ERROR.ordinal())
                    .forEach(f -> msg.append(" [").append(f.code()).append("] ").append(f.message()));
            msg.append(" (set policy preflight_mode=WARN to train anyway)");
            throw new PreconditionFailedException(msg.toString());
        }
        RunDecider guard;
        boolean resumed;
        List<Incident> incidents = new ArrayList<>();
        if (existing != null) {
            guard = existing;
            RunChecks.reopening(guard, setup);
            Joined joined = guard.join(setup.rank(), setup.watchedModules(), nanoTime.getAsLong(), setup.trainerInstance());
            resumed = joined.resumed();
            joined.otherHolder().ifPresent(holder -> findings.add(RunChecks.sharedRank(setup, holder)));
            String diff = guard.changePolicy(policy);
            if (!diff.equals("no change")) {
                incidents.add(guard.incidentAt(setup.rank(), guard.lastStep(), IncidentKind.POLICY_CHANGED, Severity.INFO,
                        "policy changed on re-open: " + diff, now));
            }
            if (resumed) {
                checkpoints.trainerRestarted(setup.runId(), setup.rank(), setup.trainerInstance());
                incidents.add(guard.incidentAt(setup.rank(), guard.lastStep(), IncidentKind.RESUMED, Severity.INFO,
                        "rank " + setup.rank() + " re-opened the run (trainer instance '" + setup.trainerInstance()
                                + "'); continuing after step " + guard.lastStep() + " in state " + guard.state(), now));
            }
        } else {
            guard = runs.computeIfAbsent(setup.runId(), id -> new RunDecider(id, setup.worldSize(), policy,
                    setup.watchedModules(), journal::nextIncidentId, now));
            resumed = guard.join(setup.rank(), setup.watchedModules(), nanoTime.getAsLong(), setup.trainerInstance()).resumed();
        }
        for (RunDecider other : runs.values()) {
            for (int rank : other.settleHangs(setup.trainerInstance(), nanoTime.getAsLong())) {
                incidents.add(guard.incidentAt(setup.rank(), -1, IncidentKind.RESUMED, Severity.INFO, "trainer process '"
                        + setup.trainerInstance() + "' opened run '" + setup.runId() + "' while rank " + rank + " of run '"
                        + other.runId() + "' was hung: taken as its restart, that hang no longer keeps the trainer "
                        + "health group DOWN", now));
            }
        }
        checkpoints.configure(setup.runId(), guard.policy().knownGoodHealthySteps());
        for (AuditFinding f : findings) {
            incidents.add(guard.incidentAt(setup.rank(), -1, IncidentKind.PREFLIGHT, f.severity(),
                    "[" + f.code() + "] " + f.message(), now));
        }
        durable.write(new JournalWrite(guard.snapshot(), List.of(), incidents));
        incidents.forEach(events::incident);
        return new OpenResult(guard.snapshot(), resumed, findings, guard.boundsFor(setup.rank(), nanoTime.getAsLong()));
    }

    public RunDecider run(String runId) {
        RunDecider g = runs.get(runId);
        if (g == null) {
            throw new RunNotFoundException(runId);
        }
        return g;
    }

    /** Decides a step and waits until a course-changing verdict is durable. */
    public Verdict report(StepReport report) {
        try {
            return reportAsync(report).get();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw DurableWrites.interrupted(e);
        } catch (ExecutionException e) {
            throw e.getCause() instanceof RuntimeException r ? r : new IllegalStateException(e.getCause());
        }
    }

    /**
     * Decides a step without blocking the caller: healthy verdicts complete at once, course-changing
     * ones (SKIP, ROLLBACK, HALT, a state change) complete when the journal has committed them, or
     * fail with {@link JournalUnavailableException} after the durable timeout. Bad input throws here.
     */
    public CompletableFuture<Verdict> reportAsync(StepReport report) {
        long start = nanoTime.getAsLong();
        RunDecider guard = run(report.runId());
        var knownGood = checkpoints.newestKnownGood(report.runId()); // lock-free reads, before the run's lock
        if (knownGood.isPresent() && knownGood.get().step() >= report.step()) {
            // not behind this step: a restarted trainer that went back to an older checkpoint while the
            // run's earlier process saved later ones (a rollback "forward" into that timeline resumed at
            // or past its trigger, was never confirmed and was ordered again at every step)
            knownGood = checkpoints.newestKnownGoodBefore(report.runId(), report.step());
        }
        // only a run with no target can halt for want of one: the pending checkpoint is looked up for it alone
        var pending = knownGood.isEmpty() ? checkpoints.newestPending(report.runId()) : Optional.<CheckpointCatalog.PendingTarget>empty();
        Decision d;
        synchronized (guard) {
            d = guard.decide(report, knownGood, pending, start, clock.instant());
            // Hand over hand: the write-order lock is taken before the run's lock is released, so one
            // run's writes are queued in decision order while the next decision may already start.
            guard.writeOrder().lock();
        }
        CompletableFuture<Void> written;
        try {
            // The step's effect on the run's checkpoints commits in the same journal transaction.
            List<JournalRow> rows = switch (d.checkpoints()) {
                case HEALTHY_STEP -> checkpoints.onHealthyStep(report.runId(), report.step());
                case UNHEALTHY_STEP -> checkpoints.onUnhealthyStep(report.runId(), report.step());
                case NONE -> List.of();
            };
            written = journal.write(d.write().withRows(rows));
        } finally {
            guard.writeOrder().unlock();
        }
        Runnable tell = () -> {
            if (d.from() != d.to()) {
                // a state change is always written, so the decision carries the run's snapshot
                events.stateChanged(report.runId(), d.from(), d.to(), d.write().run().stateReason());
            }
            d.write().incidents().forEach(events::incident);
            events.stepDecided(report, d.verdict(), nanoTime.getAsLong() - start);
        };
        if (!d.write().awaited()) {
            tell.run();
            return CompletableFuture.completedFuture(d.verdict());
        }
        return durable.then(written, () -> {
            tell.run();
            return d.verdict();
        });
    }

    /**
     * A rank could not restore the checkpoint its ROLLBACK verdict named: the checkpoint leaves the
     * targets, and the run rolls back to the next older known-good one or halts (RunDecider.restoreFailed).
     * Waits until the new course is durable.
     */
    public Verdict restoreFailed(String runId, int rank, long step, String checkpointId, String reason) {
        RunDecider g = run(runId);
        RunChecks.rank(g, rank);
        RunChecks.notClosed(g, "RestoreFailed");
        if (checkpointId == null || checkpointId.isBlank() || reason == null || reason.isBlank()) {
            throw new InvalidRequestException("RestoreFailed needs checkpoint_id (the ROLLBACK plan's checkpoint) and "
                    + "reason (why it could not be restored, in words)");
        }
        checkpoints.unrestorable(runId, checkpointId, "rank " + rank + " at step " + step + ": " + reason);
        var older = checkpoints.newestKnownGood(runId);
        Decision d;
        synchronized (g) {
            d = g.restoreFailed(rank, step, checkpointId, reason, older, nanoTime.getAsLong(), clock.instant());
        }
        durable.write(d.write());
        if (d.from() != d.to()) {
            events.stateChanged(runId, d.from(), d.to(), d.write().run().stateReason());
        }
        d.write().incidents().forEach(events::incident);
        return d.verdict();
    }

    public ValidationGate beginValidation(String runId, int rank, long step) {
        RunDecider g = run(runId);
        RunChecks.rank(g, rank);
        RunChecks.notClosed(g, "BeginValidation");
        StringBuilder why = new StringBuilder();
        boolean allowed = g.beginValidation(step, why);
        if (allowed) {
            g.progress(rank, Phase.VALIDATION, step, nanoTime.getAsLong());
        }
        return new ValidationGate(allowed, allowed ? "validation allowed at step " + step : why.toString());
    }

    public List<Long> endValidation(String runId, int rank, long step, ValidationAudit audit) {
        RunDecider g = run(runId);
        RunChecks.rank(g, rank);
        g.progress(rank, Phase.STEP, step, nanoTime.getAsLong());
        if (audit == null || !audit.anyChange()) {
            return List.of();
        }
        return List.of(recordIncident(runId, rank, step, IncidentKind.VALIDATION_MUTATION,
                audit.restored() ? Severity.ERROR : Severity.CRITICAL, ValidationMutations.message(step, audit)).id());
    }

    public RunState heartbeat(String runId, int rank, long step, Phase phase) {
        RunDecider g = run(runId);
        RunChecks.rank(g, rank);
        RunChecks.notClosed(g, "Heartbeat");
        g.progress(rank, phase, step, nanoTime.getAsLong());
        return g.state();
    }

    public Policy updatePolicy(String runId, UnaryOperator<Policy.Builder> overrides, String reason) {
        RunDecider g = run(runId);
        RunChecks.notClosed(g, "UpdatePolicy");
        Policy next = g.policy().toBuilder().let(overrides);
        String diff = g.changePolicy(next);
        checkpoints.configure(runId, next.knownGoodHealthySteps());
        recordIncident(runId, 0, g.lastStep(), IncidentKind.POLICY_CHANGED, Severity.INFO,
                "policy changed" + (reason == null || reason.isBlank() ? "" : " (" + reason + ")") + ": " + diff);
        return next;
    }

    public RunSnapshot resume(String runId, String reason) {
        RunDecider g = run(runId);
        RunState from = g.state();
        g.resume(reason == null ? "" : reason);
        // Not recordIncident: observers hear of a resume as the state change, not as an incident.
        Incident incident = g.incidentAt(0, g.lastStep(), IncidentKind.RESUMED, Severity.WARNING,
                "halted run resumed by an operator: " + reason, clock.instant());
        durable.write(new JournalWrite(g.snapshot(), List.of(), List.of(incident)));
        events.stateChanged(runId, from, g.state(), reason);
        return g.snapshot();
    }

    /**
     * An operator closes a run whose trainer is gone for good (a crashed job that will not be
     * restarted): its hang no longer keeps the trainer health group DOWN, its series leave the
     * metrics. A trainer that comes back under the run id is refused and told to use a new one.
     */
    public RunSnapshot closeByOperator(String runId, String reason) {
        if (reason == null || reason.isBlank()) {
            throw new InvalidRequestException("closing run '" + runId + "' needs a reason (journaled): send {\"reason\": \"...\"}");
        }
        RunDecider g = run(runId);
        RunState from = g.state();
        if (g.closeByOperator(reason)) {
            Incident incident = g.incidentAt(0, g.lastStep(), IncidentKind.CLOSED_BY_OPERATOR, Severity.WARNING,
                    "run closed by an operator: " + reason, clock.instant());
            durable.write(new JournalWrite(g.snapshot(), List.of(), List.of(incident)));
            events.stateChanged(runId, from, RunState.CLOSED, reason);
        }
        return g.snapshot();
    }

    public RunSnapshot close(String runId, int rank, String reason) {
        RunDecider g = run(runId);
        RunChecks.rank(g, rank);
        RunState from = g.state();
        if (g.close(rank, reason == null ? "" : reason)) {
            durable.write(new JournalWrite(g.snapshot(), List.of(), List.of()));
            events.stateChanged(runId, from, RunState.CLOSED, reason);
        }
        return g.snapshot();
    }

    /**
     * An incident from outside the step path (e.g. a validation mutation, a policy change, tensor
     * forensics): journaled with the run's snapshot before it is announced.
     */
    public Incident recordIncident(String runId, int rank, long step, IncidentKind kind, Severity severity, String message) {
        RunDecider g = run(runId);
        Incident incident = g.incidentAt(rank, step, kind, severity, message, clock.instant());
        durable.write(new JournalWrite(g.snapshot(), List.of(), List.of(incident)));
        events.incident(incident);
        return incident;
    }

    /** Every run's decider, for the reads and the hang sweep (each decider locks itself). */
    java.util.Collection<RunDecider> deciders() {
        return runs.values();
    }
}
