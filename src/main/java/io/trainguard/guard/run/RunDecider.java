package io.trainguard.guard.run;

import io.trainguard.guard.CheckpointCatalog;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.PreconditionFailedException;
import io.trainguard.guard.run.Decision.CheckpointEffect;
import io.trainguard.guard.detect.CrossRankCheck;
import io.trainguard.guard.detect.Finding;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.HangReport;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.LocalBounds;
import io.trainguard.guard.model.Phase;
import io.trainguard.guard.model.RollbackPlan;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.model.StepRecord;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.Verdict;
import io.trainguard.guard.policy.Policy;
import io.trainguard.guard.policy.PolicyDiff;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Decides the verdict of every step of one run: turns each rank's step report into APPLY / CLIP /
 * SKIP / ROLLBACK / HALT. Plain Java, no I/O, no call into other subsystems: {@link #decide} returns
 * what must be journaled and announced, and {@link GuardedRuns} applies it after the run's lock.
 * Callers serialise access per run (every public method is synchronized). What is not the verdict
 * itself lives beside it: {@link RollbackCourse} (the rollback plan and its counters),
 * {@link RankTracks} (the per-rank bookkeeping), {@link ValidationGate} (when validation may run),
 * {@link SnapshotThrottle} (how often a routine step rewrites the snapshot) and {@link Decision}.
 */
public final class RunDecider {

    private final SnapshotThrottle snapshots = new SnapshotThrottle();
    private final String runId;
    private final int worldSize;
    private final RunStateMachine state;
    private final ValidationGate validation = new ValidationGate(); // its spacing: the last one begun
    private final RankTracks ranks = new RankTracks();
    private final CrossRankCheck crossRank = new CrossRankCheck();
    private final IdSource ids;
    private final Instant createdTime;
    private Policy policy;
    private List<String> watchedModules;
    private long lastStep = -1;
    private long stepsReported;
    private final RollbackCourse rollback;
    private Instant updatedTime;
    /** Held from the end of a decision until its write is queued, so writes keep decision order. */
    private final ReentrantLock writeOrder = new ReentrantLock();
    /** The rollback target the service read for the decision in progress (decide's input). */
    private Optional<CheckpointCatalog.RollbackTarget> knownGood = Optional.empty();
    private Optional<CheckpointCatalog.PendingTarget> pending = Optional.empty();

    /** Incident ids come from the journal so they are unique across restarts. */
    public interface IdSource {
        long next();
    }

    public RunDecider(String runId, int worldSize, Policy policy, List<String> watchedModules, IdSource ids, Instant now) {
        this.runId = runId;
        this.worldSize = worldSize;
        this.policy = policy;
        this.watchedModules = List.copyOf(watchedModules);
        this.ids = ids;
        this.state = new RunStateMachine(RunState.HEALTHY, "opened");
        this.rollback = new RollbackCourse(worldSize);
        this.createdTime = now;
        this.updatedTime = now;
    }

    /** Rebuilds a run from its journaled snapshot; statistics are replayed separately per rank. */
    public static RunDecider restore(RunSnapshot s, IdSource ids) {
        RunDecider g = new RunDecider(s.runId(), s.worldSize(), s.policy(), s.watchedModules(), ids, s.createdTime());
        g.state.restore(s.state(), s.stateReason(), s.haltStep());
        g.lastStep = s.lastStep();
        g.stepsReported = s.stepsReported();
        g.rollback.restore(s);
        g.updatedTime = s.updatedTime();
        return g;
    }

    /** Replays one rank's journaled steps; {@code faultSteps}: the steps it has step-fault incidents at. */
    public synchronized void replay(int rank, List<StepRecord> steps, Set<Long> faultSteps, long nowNanos) {
        RankTrack t = track(rank, nowNanos);
        for (StepRecord s : steps) {
            // Routine snapshots are throttled; the step rows are the truth about the newest steps.
            if (s.time().isAfter(updatedTime)) {
                stepsReported++;
                lastStep = s.step();
                updatedTime = s.time();
            }
            t.replay(s, faultSteps.contains(s.step()));
        }
    }

    public String runId() {
        return runId;
    }

    public int worldSize() {
        return worldSize;
    }

    public synchronized Policy policy() {
        return policy;
    }

    public synchronized RunState state() {
        return state.state();
    }

    private RankTrack track(int rank, long nowNanos) {
        return ranks.track(rank, policy, nowNanos);
    }

    // ------------------------------------------------------------------ joining

    /** A rank (re)joins from trainer process {@code trainerInstance} ("" when unnamed): see {@link Joined}. */
    public synchronized Joined join(int rank, List<String> modules, long nowNanos, String trainerInstance) {
        Joined joined = new Joined(ranks.known(rank) || lastStep >= 0, ranks.otherHolder(rank, trainerInstance, nowNanos));
        RankTrack t = track(rank, nowNanos);
        t.closed = false;
        t.hang.reopened(nowNanos);  // the phase a crashed or hung process was in is over (HangWatch.reopened)
        t.heldBy(trainerInstance);
        if (!modules.isEmpty()) {
            watchedModules = List.copyOf(modules);
        }
        return joined;
    }

    public synchronized long lastStep() {
        return lastStep;
    }

    // ------------------------------------------------------------------ steps

    /**
     * Decides one rank's step. Pure with respect to the outside world: it reads only the report,
     * this run's state and {@code knownGood} (the rollback target the caller looked up), changes
     * only this run's state, and returns everything to write and announce.
     */
    public synchronized Decision decide(StepReport r, Optional<CheckpointCatalog.RollbackTarget> knownGood,
                                        Optional<CheckpointCatalog.PendingTarget> pending, long nowNanos, Instant now) {
        this.knownGood = knownGood;
        this.pending = pending;
        ReportValidation.validate(r, worldSize, watchedModules);
        if (state.state() == RunState.CLOSED) {
            throw new PreconditionFailedException("run '" + runId + "' is closed (" + state.reason()
                    + "): open a new run id to train again");
        }
        RunState from = state.state();
        RankTrack t = track(r.rank(), nowNanos);
        t.hang.progress(Phase.STEP, r.step(), nowNanos);
        stepsReported++;
        updatedTime = now;
        lastStep = r.step();
        t.lastStep = r.step();

        List<String> reasons = new ArrayList<>();
        List<Incident> incidents = new ArrayList<>();
        Outcome o = new Outcome();

        if (state.state() == RunState.HALTED) {
            o.action = Action.HALT;
            reasons.add(state.haltedReason(runId));
        } else if (state.state() == RunState.ROLLING_BACK && rollback.owedTo(r.rank(), r.step())) {
            o.action = Action.ROLLBACK;
            o.plan = rollback.pending();
            reasons.add(rollback.pendingReason());
        } else {
            if (state.state() == RunState.ROLLING_BACK) {
                confirmRollback(r, t, incidents, now);
            }
            evaluate(r, t, reasons, incidents, o, now);
        }

        boolean healthy = o.action == Action.APPLY || o.action == Action.CLIP;
        CheckpointEffect effect = CheckpointEffect.NONE;
        if (healthy) {
            effect = CheckpointEffect.HEALTHY_STEP;
            t.healthyStreak++;
            rollback.healthyStep(policy);
            if (state.state() == RunState.DEGRADED && ranks.allHealthyFor(t, policy.recoverySteps())) {
                state.moveTo(RunState.HEALTHY, "recovered: " + policy.recoverySteps() + " healthy steps in a row");
            }
        } else if (!o.neutralSkip && (o.action != Action.HALT || from != RunState.HALTED)) {
            effect = CheckpointEffect.UNHEALTHY_STEP;
            t.healthyStreak = 0;
        }

        boolean validationAllowed = healthy && validation.open(state, policy, r.step(), null);
        Verdict verdict = new Verdict(r.step(), o.action, o.action == Action.CLIP ? o.clip : 0, validationAllowed,
                List.copyOf(reasons), o.firstBadModule, state.state(), o.plan, bounds(t),
                incidents.isEmpty() ? List.of() : incidents.stream().map(Incident::id).toList());
        StepRecord record = new StepRecord(runId, r.rank(), r.step(), r.lossAbsent() ? Double.NaN : r.loss(), r.gradNorm(),
                r.learningRate(), r.lossScale(), o.action, verdict.clipThreshold(), now);
        // a neutral skip changes nothing for this rank (no streak, no checkpoint): no commit to wait for
        boolean durable = o.action.changesCourse() && !o.neutralSkip && from != RunState.HALTED
                || from != state.state();
        RunSnapshot snapshot = snapshots.take(durable || !incidents.isEmpty(), nowNanos) ? snapshot() : null;
        this.knownGood = Optional.empty();
        this.pending = Optional.empty();
        return new Decision(verdict, new JournalWrite(snapshot, List.of(record), List.copyOf(incidents), durable),
                from, state.state(), effect);
    }

    private void evaluate(StepReport r, RankTrack t, List<String> reasons, List<Incident> incidents, Outcome o, Instant now) {
        StepJudge.Judged judged = StepJudge.judge(r, t, policy, watchedModules, crossRank, worldSize, reasons, o);
        for (Finding f : judged.findings()) {
            incidents.add(incident(r, f.kind(), f.severity(), f.message(), f.module(), now));
        }
        if (judged.skipped() || !judged.findings().isEmpty()) {
            state.degrade(reasons.get(0));
        }
        if (o.action == Action.ROLLBACK) {
            orderRollback(r, reasons, incidents, o, now);
        }
    }

    private void orderRollback(StepReport r, List<String> reasons, List<Incident> incidents, Outcome o, Instant now) {
        String cause = String.join("; ", reasons);
        var target = knownGood;
        if (target.isEmpty()) {
            halt(r, reasons, incidents, o, now, RollbackCourse.noTargetReason(cause, policy, pending));
            return;
        }
        if (rollback.exhausted(policy)) {
            halt(r, reasons, incidents, o, now, rollback.exhaustedReason(cause, target.get(), policy));
            return;
        }
        RollbackPlan plan = rollback.plan(target.get(), r.step(), policy);
        crossRank.clear(); // the steps past the checkpoint are reported again from the restored weights
        String msg = RollbackCourse.orderedReason(plan, cause);
        state.moveTo(RunState.ROLLING_BACK, msg);
        reasons.add(msg);
        incidents.add(incident(r, IncidentKind.ROLLBACK, Severity.ERROR, msg, "", now));
        o.plan = plan;
    }

    /**
     * Rank {@code rank} could not restore the pending plan's checkpoint {@code checkpointId} (gone or
     * changed since it was verified, unreadable, non-finite): the same attempt rolls back to
     * {@code older} instead, or the run halts when there is none. A rank that reports a plan the run
     * has already moved past (another rank's report came first) is told the current course.
     */
    public synchronized Decision restoreFailed(int rank, long step, String checkpointId, String why,
            Optional<CheckpointCatalog.RollbackTarget> older, long nowNanos, Instant now) {
        RunState from = state.state();
        RollbackPlan plan = rollback.pending();
        if (from != RunState.HALTED && (from != RunState.ROLLING_BACK || plan == null)) {
            throw new PreconditionFailedException("run '" + runId + "' has no rollback pending (it is " + from
                    + "): RestoreFailed answers a ROLLBACK verdict whose checkpoint could not be restored");
        }
        List<Incident> incidents = new ArrayList<>();
        if (from == RunState.ROLLING_BACK && plan.checkpointId().equals(checkpointId)) {
            RollbackCourse.Course next = rollback.unrestorable(rank, why, older, policy);
            if (next.halts()) {
                state.halt(next.message(), step);
            } else {
                state.moveTo(RunState.ROLLING_BACK, next.message());
            }
            incidents.add(incidentAt(rank, step, next.halts() ? IncidentKind.HALT : IncidentKind.ROLLBACK,
                    next.halts() ? Severity.CRITICAL : Severity.ERROR, next.message(), now));
        }
        boolean halted = state.state() == RunState.HALTED;
        Verdict verdict = new Verdict(step, halted ? Action.HALT : Action.ROLLBACK, 0, false,
                List.of(halted ? state.haltedReason(runId) : rollback.pendingReason()), "", state.state(),
                halted ? null : rollback.pending(), bounds(track(rank, nowNanos)), incidents.stream().map(Incident::id).toList());
        return new Decision(verdict, new JournalWrite(snapshot(), List.of(), List.copyOf(incidents), true), from,
                state.state(), CheckpointEffect.NONE);
    }

    private void halt(StepReport r, List<String> reasons, List<Incident> incidents, Outcome o, Instant now, String why) {
        state.halt(why, r.step());
        o.action = Action.HALT;
        reasons.add("halted: " + why);
        incidents.add(incident(r, IncidentKind.HALT, Severity.CRITICAL, why, o.firstBadModule, now));
    }

    private void confirmRollback(StepReport r, RankTrack t, List<Incident> incidents, Instant now) {
        if (rollback.confirm(r.rank())) {
            // The restored state's loss and grad norms are its own (an early checkpoint's loss can be 30x the
            // abandoned timeline's level, each step then a "spike", skipped, rolled back, halted): start over.
            t.stats.rebuild(policy);
            t.consecutiveSkips = 0;
            t.healthyStreak = 0;
        }
        RollbackPlan done = rollback.finishIfConfirmed();
        if (done != null) {
            String msg = RollbackCourse.confirmedReason(done, r.step());
            state.moveTo(RunState.DEGRADED, msg);
            incidents.add(incident(r, IncidentKind.ROLLBACK, Severity.INFO, msg, "", now));
        }
    }

    private LocalBounds bounds(RankTrack t) {
        RunState now = state.state();
        // a run that is not taking steps on its own must not let the client decide any locally
        return t.bounds(policy, now == RunState.HALTED || now == RunState.ROLLING_BACK || now == RunState.CLOSED);
    }

    private Incident incident(StepReport r, IncidentKind kind, Severity severity, String message, String module, Instant now) {
        return new Incident(ids.next(), runId, r.rank(), r.step(), kind, severity, message, module == null ? "" : module, now);
    }

    // ------------------------------------------------------------------ validation, heartbeats, policy

    /** Whether a validation may begin at {@code step}; if so it begins: the next one waits the interval. */
    public synchronized boolean beginValidation(long step, StringBuilder why) {
        return validation.begin(state, policy, step, why);
    }

    public synchronized void progress(int rank, Phase phase, long step, long nowNanos) {
        track(rank, nowNanos).hang.progress(phase, step, nowNanos);
    }

    public synchronized Incident incidentAt(int rank, long step, IncidentKind kind, Severity severity, String message, Instant now) {
        updatedTime = now;
        return new Incident(ids.next(), runId, rank, step, kind, severity, message, "", now);
    }

    public synchronized String changePolicy(Policy next) {
        Policy before = policy;
        policy = next;
        ranks.policyChanged(before, next);
        return PolicyDiff.describe(before, next);
    }

    public synchronized void resume(String why) {
        if (state.state() != RunState.HALTED) {
            throw new PreconditionFailedException("run '" + runId + "' is " + state.state() + ", not HALTED: nothing to resume");
        }
        state.moveTo(RunState.DEGRADED, "resumed by operator: " + why);
        rollback.forgiveAttempts();
        ranks.clearSkips();
    }

    /** An operator retires the run (its trainer is gone for good); false when it was closed already. */
    public synchronized boolean closeByOperator(String why) {
        ranks.closeAll();
        return close(-1, "closed by an operator: " + why);  // every rank closed: the run closes as a trainer's would
    }

    /** Closes the run once every rank that joined has closed it. Returns true when the run closed now. */
    public synchronized boolean close(int rank, String why) {
        RankTrack t = ranks.get(rank);
        if (t != null) {
            t.closed = true;
        }
        if (ranks.allClosed() && state.state() != RunState.CLOSED) {
            state.moveTo(RunState.CLOSED, why.isBlank() ? "closed by the trainer" : why);
            return true;
        }
        return false;
    }

    /** Another trainer process opened a run: this run's hung ranks held by other processes are settled (RankTracks). */
    public synchronized List<Integer> settleHangs(String trainerInstance, long nowNanos) {
        return ranks.settleHangs(trainerInstance, policy, nowNanos);
    }

    /** The ranks overdue now; none for a run that is not taking steps (closed, halted). */
    public synchronized List<HangReport> hangs(long nowNanos) {
        boolean stepping = state.state() != RunState.CLOSED && state.state() != RunState.HALTED;
        return stepping ? ranks.hangs(runId, policy, nowNanos) : List.of();
    }

    public synchronized RunSnapshot snapshot() {
        return new RunSnapshot(runId, worldSize, state.state(), state.reason(), lastStep, ranks.maxConsecutiveSkips(),
                rollback.rollbacks(), rollback.attempts(), rollback.lastRollbackStep(), rollback.pending(), policy, watchedModules, createdTime, updatedTime,
                stepsReported, state.haltStep());
    }

    /** Taken while holding this run's lock at the end of a decision, released once its write is queued. */
    public ReentrantLock writeOrder() {
        return writeOrder;
    }

    public synchronized LocalBounds boundsFor(int rank, long nowNanos) {
        return bounds(track(rank, nowNanos));
    }
}
