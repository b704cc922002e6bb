package io.trainguard.guard.run;

import io.trainguard.guard.CheckpointCatalog;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.PreconditionFailedException;
import io.trainguard.guard.detect.CrossRankCheck;
import io.trainguard.guard.detect.Detectors;
import io.trainguard.guard.detect.Finding;
import io.trainguard.guard.detect.StepContext;
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
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.Set;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Decides the verdict of every step of one run: turns each rank's step report into APPLY / CLIP /
 * SKIP / ROLLBACK / HALT. Plain Java, no I/O, no call into other subsystems: {@link #decide} returns
 * what must be journaled and announced, and {@link GuardedRuns} applies it after the run's lock.
 * Callers serialise access per run (every public method is synchronized).
 */
public final class RunDecider {

    /**
     * A verdict and everything that follows from it, for the service to apply after the run's lock:
     * the journal write (awaited writes are durable before the verdict leaves), the state change to
     * announce, and what the step means for the run's checkpoints.
     */
    public record Decision(Verdict verdict, JournalWrite write, RunState from, RunState to, CheckpointEffect checkpoints) {
    }

    /** What a decided step does to the run's not-yet-known-good checkpoints. */
    public enum CheckpointEffect {
        /** an applied step: counts towards promoting verified checkpoints */
        HEALTHY_STEP,
        /** a skipped (or worse) step: checkpoints below it are never promoted */
        UNHEALTHY_STEP,
        /** a halted run's repeated HALT: already counted */
        NONE
    }

    private static final int BOUNDS_VALID_STEPS = 64;
    /** Routine healthy steps rewrite the run's snapshot at most this often (building it walks every rank). */
    private static final long SNAPSHOT_INTERVAL_NANOS = 250_000_000L;
    private long lastSnapshotNanos = Long.MIN_VALUE / 2;
    private final String runId;
    private final int worldSize;
    private final RunStateMachine state;
    private final Map<Integer, RankTrack> ranks = new HashMap<>();
    private final CrossRankCheck crossRank = new CrossRankCheck();
    private final IdSource ids;
    private final Instant createdTime;
    private Policy policy;
    private List<String> watchedModules;
    private long lastStep = -1;
    private long stepsReported;
    private int rollbacks;
    private int rollbackAttempts;
    private long lastRollbackStep = -1;
    private long healthySinceRollback;
    private RollbackPlan pendingRollback;
    private final Set<Integer> ranksToConfirmRollback = new HashSet<>();
    private long haltStep = -1;
    private Instant updatedTime;
    /** Held from the end of a decision until its write is queued, so writes keep decision order. */
    private final ReentrantLock writeOrder = new ReentrantLock();
    /** The rollback target the service read for the decision in progress (decide's input). */
    private Optional<CheckpointCatalog.RollbackTarget> knownGood = Optional.empty();

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
        this.createdTime = now;
        this.updatedTime = now;
    }

    /** Rebuilds a run from its journaled snapshot; statistics are replayed separately per rank. */
    public static RunDecider restore(RunSnapshot s, IdSource ids) {
        RunDecider g = new RunDecider(s.runId(), s.worldSize(), s.policy(), s.watchedModules(), ids, s.createdTime());
        g.state.moveTo(s.state(), s.stateReason());
        g.lastStep = s.lastStep();
        g.stepsReported = s.stepsReported();
        g.rollbacks = s.rollbacks();
        g.rollbackAttempts = s.rollbackAttempts();
        g.lastRollbackStep = s.lastRollbackStep();
        g.pendingRollback = s.pendingRollback();
        g.haltStep = s.haltStep();
        g.updatedTime = s.updatedTime();
        if (s.state() == RunState.ROLLING_BACK) {
            for (int r = 0; r < s.worldSize(); r++) {
                g.ranksToConfirmRollback.add(r);
            }
        }
        return g;
    }

    public synchronized void replay(int rank, List<StepRecord> steps, long nowNanos) {
        RankTrack t = track(rank, nowNanos);
        for (StepRecord s : steps) {
            // Routine snapshots are throttled; the step rows are the truth about the newest steps.
            if (s.time().isAfter(updatedTime)) {
                stepsReported++;
                lastStep = s.step();
                updatedTime = s.time();
            }
            if (s.action() == Action.APPLY || s.action() == Action.CLIP) {
                t.stats.learn(s.loss(), Double.isNaN(s.loss()), s.gradNorm());
                t.stats.divergence.observe(s.loss());
                t.consecutiveSkips = 0;
                t.healthyStreak++;
            } else if (s.action() == Action.SKIP) {
                t.consecutiveSkips++;
                t.healthyStreak = 0;
            }
            t.lastStep = s.step();
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
        return ranks.computeIfAbsent(rank, r -> new RankTrack(r, policy, nowNanos));
    }

    // ------------------------------------------------------------------ joining

    /** A rank (re)joins. Returns true when this is a resume of a rank that was seen before. */
    public synchronized boolean join(int rank, List<String> modules, long nowNanos) {
        boolean known = ranks.containsKey(rank);
        RankTrack t = track(rank, nowNanos);
        boolean resumed = known || lastStep >= 0;
        t.closed = false;
        if (!modules.isEmpty()) {
            watchedModules = List.copyOf(modules);
        }
        return resumed;
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
    public synchronized Decision decide(StepReport r, Optional<CheckpointCatalog.RollbackTarget> knownGood, long nowNanos,
                                        Instant now) {
        this.knownGood = knownGood;
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
            reasons.add("run is halted since step " + haltStep + ": " + state.reason());
        } else if (state.state() == RunState.ROLLING_BACK && ranksToConfirmRollback.contains(r.rank())
                && r.step() >= pendingRollback.triggerStep()) {
            o.action = Action.ROLLBACK;
            o.plan = pendingRollback;
            reasons.add("rollback to checkpoint " + pendingRollback.checkpointId() + " (step "
                    + pendingRollback.checkpointStep() + ") is pending: restore it and resume from step "
                    + (pendingRollback.checkpointStep() + 1));
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
            if (pendingRollback == null && rollbackAttempts > 0 && ++healthySinceRollback >= policy.rollbackWindowSteps()) {
                rollbackAttempts = 0;
            }
            if (state.state() == RunState.DEGRADED && minHealthyStreak() >= policy.recoverySteps()) {
                state.moveTo(RunState.HEALTHY, "recovered: " + policy.recoverySteps() + " healthy steps in a row");
            }
        } else if (o.action != Action.HALT || from != RunState.HALTED) {
            effect = CheckpointEffect.UNHEALTHY_STEP;
            t.healthyStreak = 0;
        }

        boolean validationAllowed = healthy && validationDue(r.step());
        Verdict verdict = new Verdict(r.step(), o.action, o.action == Action.CLIP ? o.clip : 0, validationAllowed,
                List.copyOf(reasons), o.firstBadModule, state.state(), o.plan, bounds(t),
                incidents.isEmpty() ? List.of() : incidents.stream().map(Incident::id).toList());
        StepRecord record = new StepRecord(runId, r.rank(), r.step(), r.lossAbsent() ? Double.NaN : r.loss(), r.gradNorm(),
                r.learningRate(), r.lossScale(), o.action, verdict.clipThreshold(), now);
        boolean durable = o.action.changesCourse() && from != RunState.HALTED || from != state.state();
        RunSnapshot snapshot = null;
        if (durable || !incidents.isEmpty() || nowNanos - lastSnapshotNanos >= SNAPSHOT_INTERVAL_NANOS) {
            snapshot = snapshot();
            lastSnapshotNanos = nowNanos;
        }
        this.knownGood = Optional.empty();
        return new Decision(verdict, new JournalWrite(snapshot, List.of(record), List.copyOf(incidents), durable),
                from, state.state(), effect);
    }

    private static final class Outcome {
        Action action = Action.APPLY;
        double clip = Double.POSITIVE_INFINITY;
        String firstBadModule = "";
        RollbackPlan plan;
    }

    private void evaluate(StepReport r, RankTrack t, List<String> reasons, List<Incident> incidents, Outcome o, Instant now) {
        StepFold fold = StepFold.of(Detectors.inspect(new StepContext(r, policy, t.stats, watchedModules, crossRank, worldSize)));
        o.action = fold.action();
        o.clip = fold.clip();
        o.firstBadModule = fold.module();
        reasons.addAll(fold.reasons());
        for (Finding f : fold.incidents()) {
            incidents.add(incident(r, f.kind(), f.severity(), f.message(), f.module(), now));
        }
        if (o.action == Action.APPLY || o.action == Action.CLIP) {
            t.stats.learn(r.loss(), r.lossAbsent(), r.gradNorm());
        }

        if (o.action == Action.SKIP) {
            t.consecutiveSkips++;
            if (state.state() == RunState.HEALTHY) {
                state.moveTo(RunState.DEGRADED, reasons.get(0));
            }
            if (t.consecutiveSkips > policy.maxConsecutiveSkips()) {
                String msg = t.consecutiveSkips + " consecutive skipped steps (limit " + policy.maxConsecutiveSkips() + ")";
                reasons.add(msg);
                o.action = Action.ROLLBACK;
            }
        } else {
            t.consecutiveSkips = 0;
            if (!incidents.isEmpty() && state.state() == RunState.HEALTHY) {
                state.moveTo(RunState.DEGRADED, reasons.get(0));
            }
        }
        if (o.action == Action.ROLLBACK) {
            orderRollback(r, reasons, incidents, o, now);
        }
    }

    private void orderRollback(StepReport r, List<String> reasons, List<Incident> incidents, Outcome o, Instant now) {
        String cause = String.join("; ", reasons);
        var target = knownGood;
        if (target.isEmpty()) {
            halt(r, reasons, incidents, o, now, cause + ". No known-good checkpoint exists to roll back to: register "
                    + "checkpoints with RegisterCheckpoint (one becomes known-good after it verifies clean and "
                    + policy.knownGoodHealthySteps() + " healthy steps follow it), then restart from your last good state");
            return;
        }
        if (rollbackAttempts >= policy.maxRollbacks()) {
            halt(r, reasons, incidents, o, now, cause + ". Already rolled back " + rollbackAttempts + " time(s) within "
                    + policy.rollbackWindowSteps() + " steps and the problem came back: lower the learning rate, "
                    + "tighten clipping, or inspect the data after position " + target.get().dataPosition()
                    + " before resuming from checkpoint " + target.get().checkpointId());
            return;
        }
        rollbackAttempts++;
        rollbacks++;
        healthySinceRollback = 0;
        lastRollbackStep = r.step();
        var cp = target.get();
        long skip = Math.max(0, r.step() - cp.step()) + policy.rollbackSkipBatches() * rollbackAttempts;
        pendingRollback = new RollbackPlan(cp.checkpointId(), cp.step(), cp.files(), cp.dataPosition(), skip,
                Math.pow(policy.rollbackLrFactor(), rollbackAttempts), policy.rollbackRewarmSteps() * rollbackAttempts,
                rollbackAttempts, r.step());
        ranksToConfirmRollback.clear();
        for (int rank = 0; rank < worldSize; rank++) {
            ranksToConfirmRollback.add(rank);
        }
        String msg = String.format("rolling back to checkpoint %s (step %d), attempt %d: skip %d batches, LR x%.3g, "
                        + "re-warm over %d steps. Cause: %s", cp.checkpointId(), cp.step(), rollbackAttempts, skip,
                pendingRollback.lrFactor(), pendingRollback.rewarmSteps(), cause);
        state.moveTo(RunState.ROLLING_BACK, msg);
        reasons.add(msg);
        incidents.add(incident(r, IncidentKind.ROLLBACK, Severity.ERROR, msg, "", now));
        o.plan = pendingRollback;
    }

    private void halt(StepReport r, List<String> reasons, List<Incident> incidents, Outcome o, Instant now, String why) {
        state.moveTo(RunState.HALTED, why);
        haltStep = r.step();
        o.action = Action.HALT;
        reasons.add("halted: " + why);
        incidents.add(incident(r, IncidentKind.HALT, Severity.CRITICAL, why, o.firstBadModule, now));
    }

    private void confirmRollback(StepReport r, RankTrack t, List<Incident> incidents, Instant now) {
        if (ranksToConfirmRollback.remove(r.rank())) {
            t.stats.divergence.reset();
            t.consecutiveSkips = 0;
            t.healthyStreak = 0;
        }
        if (ranksToConfirmRollback.isEmpty()) {
            String msg = "rollback to checkpoint " + pendingRollback.checkpointId() + " (step "
                    + pendingRollback.checkpointStep() + ", attempt " + pendingRollback.attempt()
                    + ") confirmed: every rank resumed, first report at step " + r.step() + "; re-warming";
            state.moveTo(RunState.DEGRADED, msg);
            incidents.add(incident(r, IncidentKind.ROLLBACK, Severity.INFO, msg, "", now));
            pendingRollback = null;
        }
    }

    private int minHealthyStreak() {
        return ranks.values().stream().filter(t -> !t.closed).mapToInt(t -> t.healthyStreak).min().orElse(0);
    }

    private boolean validationDue(long step) {
        return state.state() == RunState.HEALTHY && step >= policy.validationWarmupSteps()
                && step % policy.validationIntervalSteps() == 0;
    }

    private LocalBounds bounds(RankTrack t) {
        if (state.state() == RunState.HALTED || state.state() == RunState.ROLLING_BACK || state.state() == RunState.CLOSED) {
            return new LocalBounds(-1, Double.NEGATIVE_INFINITY, 0, t.lastStep);
        }
        double z = policy.spikeZThreshold();
        double maxGrad = Math.min(t.stats.gradSpikes.upperBound(z), t.stats.clip.localAskAbove());
        // Valid for a window of steps: asynchronous reports let the trainer run ahead of verdicts, and
        // a HALT/ROLLBACK found meanwhile still reaches it with the next verdict.
        return new LocalBounds(maxGrad, t.stats.lossSpikes.upperBound(z), t.stats.clip.localThreshold(), t.lastStep + BOUNDS_VALID_STEPS);
    }

    private Incident incident(StepReport r, IncidentKind kind, Severity severity, String message, String module, Instant now) {
        return new Incident(ids.next(), runId, r.rank(), r.step(), kind, severity, message, module == null ? "" : module, now);
    }

    // ------------------------------------------------------------------ validation, heartbeats, policy

    public synchronized boolean validationAllowed(long step, StringBuilder why) {
        if (state.state() != RunState.HEALTHY) {
            why.append("run is ").append(state.state()).append(": ").append(state.reason());
            return false;
        }
        if (step < policy.validationWarmupSteps()) {
            why.append("validation is deferred until step ").append(policy.validationWarmupSteps());
            return false;
        }
        if (step % policy.validationIntervalSteps() != 0) {
            why.append("validation runs every ").append(policy.validationIntervalSteps()).append(" steps");
            return false;
        }
        return true;
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
        boolean shapeChanged = before.spikeEmaAlpha() != next.spikeEmaAlpha() || before.spikeWarmupSteps() != next.spikeWarmupSteps()
                || before.divergenceRatio() != next.divergenceRatio() || before.divergenceWindow() != next.divergenceWindow();
        boolean clipChanged = before.clipMode() != next.clipMode() || before.clipThreshold() != next.clipThreshold()
                || before.zclipAlpha() != next.zclipAlpha() || before.zclipZThreshold() != next.zclipZThreshold()
                || before.autoclipPercentile() != next.autoclipPercentile();
        for (RankTrack t : ranks.values()) {
            if (shapeChanged) {
                t.stats.rebuild(next);
            } else if (clipChanged) {
                t.stats.rebuildClip(next);
            }
        }
        return PolicyDiff.describe(before, next);
    }

    public synchronized void resume(String why) {
        if (state.state() != RunState.HALTED) {
            throw new PreconditionFailedException("run '" + runId + "' is " + state.state() + ", not HALTED: nothing to resume");
        }
        state.moveTo(RunState.DEGRADED, "resumed by operator: " + why);
        rollbackAttempts = 0;
        for (RankTrack t : ranks.values()) {
            t.consecutiveSkips = 0;
        }
    }

    /** Closes the run once every rank that joined has closed it. Returns true when the run closed now. */
    public synchronized boolean close(int rank, String why) {
        RankTrack t = ranks.get(rank);
        if (t != null) {
            t.closed = true;
        }
        if (ranks.values().stream().allMatch(x -> x.closed) && state.state() != RunState.CLOSED) {
            state.moveTo(RunState.CLOSED, why.isBlank() ? "closed by the trainer" : why);
            return true;
        }
        return false;
    }

    public synchronized List<HangReport> hangs(long nowNanos) {
        List<HangReport> out = new ArrayList<>();
        if (state.state() == RunState.CLOSED || state.state() == RunState.HALTED) {
            return out;
        }
        for (RankTrack t : ranks.values()) {
            if (t.closed) {
                continue;
            }
            var overdue = t.hang.overdue(nowNanos, policy.hangFactor(), policy.hangMin(), policy.hangMax());
            if (!overdue.isZero()) {
                out.add(new HangReport(runId, t.rank, t.hang.lastStep(), t.hang.phase(),
                        t.hang.sinceLastProgress(nowNanos), t.hang.allowance(policy.hangFactor(), policy.hangMin(), policy.hangMax())));
            }
        }
        return out;
    }

    public synchronized RunSnapshot snapshot() {
        int maxSkips = ranks.values().stream().mapToInt(t -> t.consecutiveSkips).max().orElse(0);
        return new RunSnapshot(runId, worldSize, state.state(), state.reason(), lastStep, maxSkips, rollbacks,
                rollbackAttempts, lastRollbackStep, pendingRollback, policy, watchedModules, createdTime, updatedTime,
                stepsReported, haltStep);
    }

    /** Taken while holding this run's lock at the end of a decision, released once its write is queued. */
    public ReentrantLock writeOrder() {
        return writeOrder;
    }

    public synchronized LocalBounds boundsFor(int rank, long nowNanos) {
        return bounds(track(rank, nowNanos));
    }
}
