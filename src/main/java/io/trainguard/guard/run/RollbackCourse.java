package io.trainguard.guard.run;

import io.trainguard.guard.CheckpointCatalog;
import io.trainguard.guard.model.RollbackPlan;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.policy.Policy;
import java.util.HashSet;
import java.util.Optional;
import java.util.Set;

/**
 * A run's rollback course: the counters the policy caps, the plan still owed to ranks that have not
 * resumed from it, and the plan's arithmetic (PaLM's skip / LR cut / re-warm, scaled by attempt).
 * Kept apart from {@link RunDecider} so the decider only says when a run rolls back or halts, and
 * this says what the rollback is. Not thread-safe: the owning decider's lock guards it.
 */
final class RollbackCourse {

    private final int worldSize;
    private int rollbacks;
    private int attempts;
    private long lastRollbackStep = -1;
    private long healthySinceRollback;
    private RollbackPlan pending;
    /** Ranks that have not yet reported a step after the pending plan; each still gets ROLLBACK. */
    private final Set<Integer> ranksToConfirm = new HashSet<>();

    RollbackCourse(int worldSize) {
        this.worldSize = worldSize;
    }

    /** Takes the counters back from a snapshot; a run restored mid-rollback waits for every rank again. */
    void restore(RunSnapshot s) {
        rollbacks = s.rollbacks();
        attempts = s.rollbackAttempts();
        lastRollbackStep = s.lastRollbackStep();
        pending = s.pendingRollback();
        if (s.state() == RunState.ROLLING_BACK) {
            awaitEveryRank();
        }
    }

    RollbackPlan pending() {
        return pending;
    }

    int rollbacks() {
        return rollbacks;
    }

    int attempts() {
        return attempts;
    }

    long lastRollbackStep() {
        return lastRollbackStep;
    }

    /** True when this rank has not resumed yet and reports a step at or past the trigger: it must still be told. */
    boolean owedTo(int rank, long step) {
        return ranksToConfirm.contains(rank) && step >= pending.triggerStep();
    }

    /** The policy's cap on attempts within its window is reached: the next rollback would be a HALT instead. */
    boolean exhausted(Policy policy) {
        return attempts >= policy.maxRollbacks();
    }

    /** Counts one more attempt and returns the plan for it; every rank must now confirm it. */
    RollbackPlan plan(CheckpointCatalog.RollbackTarget cp, long triggerStep, Policy policy) {
        attempts++;
        rollbacks++;
        healthySinceRollback = 0;
        lastRollbackStep = triggerStep;
        long skip = Math.max(0, triggerStep - cp.step()) + policy.rollbackSkipBatches() * attempts;
        pending = new RollbackPlan(cp.checkpointId(), cp.step(), cp.files(), cp.dataPosition(), skip,
                Math.pow(policy.rollbackLrFactor(), attempts), policy.rollbackRewarmSteps() * attempts,
                attempts, triggerStep);
        awaitEveryRank();
        return pending;
    }

    /** What a rank's failed restore leads to: the same attempt from an older target, or a halt. */
    record Course(boolean halts, String message) {
    }

    /**
     * Rank {@code rank} could not restore the pending plan's checkpoint: the same attempt goes to
     * {@code older} (an older known-good checkpoint) with its LR cut and re-warm, every rank
     * confirming it anew; with none older, the run must halt.
     */
    Course unrestorable(int rank, String why, Optional<CheckpointCatalog.RollbackTarget> older, Policy policy) {
        RollbackPlan was = pending;
        String cause = "checkpoint " + was.checkpointId() + " (step " + was.checkpointStep() + ") could not be restored by rank "
                + rank + ": " + why;
        if (older.isEmpty() || older.get().step() >= was.checkpointStep()) {
            return new Course(true, cause + ". No older known-good checkpoint to roll back to: restart from your last good state");
        }
        CheckpointCatalog.RollbackTarget cp = older.get();
        long skip = Math.max(0, was.triggerStep() - cp.step()) + policy.rollbackSkipBatches() * was.attempt();
        pending = new RollbackPlan(cp.checkpointId(), cp.step(), cp.files(), cp.dataPosition(), skip, was.lrFactor(),
                was.rewarmSteps(), was.attempt(), was.triggerStep());
        awaitEveryRank();
        return new Course(false, orderedReason(pending, cause));
    }

    /** Returns true when this report is the rank's first after the plan (its statistics must start over). */
    boolean confirm(int rank) {
        return ranksToConfirm.remove(rank);
    }

    /** Once every rank has confirmed: returns the finished plan and forgets it; otherwise null. */
    RollbackPlan finishIfConfirmed() {
        if (!ranksToConfirm.isEmpty()) {
            return null;
        }
        RollbackPlan done = pending;
        pending = null;
        return done;
    }

    /** A healthy step: a full window of them without a new rollback forgives the earlier attempts. */
    void healthyStep(Policy policy) {
        if (pending == null && attempts > 0 && ++healthySinceRollback >= policy.rollbackWindowSteps()) {
            attempts = 0;
        }
    }

    /** The operator resumed a halted run: the attempt cap starts over. */
    void forgiveAttempts() {
        attempts = 0;
    }

    // ---- the words: what the verdict's reason and the incident say about the rollback

    String pendingReason() {
        return "rollback to checkpoint " + pending.checkpointId() + " (step "
                + pending.checkpointStep() + ") is pending: restore it and resume from step "
                + (pending.checkpointStep() + 1);
    }

    static String noTargetReason(String cause, Policy policy, Optional<CheckpointCatalog.PendingTarget> pending) {
        if (pending.isPresent()) {
            // the trainer did register checkpoints: telling it to register some would send it the wrong way
            return cause + ". No known-good checkpoint to roll back to yet: " + pending.get().describe()
                    + "; a checkpoint becomes a rollback target once it verifies clean and the healthy steps follow it. "
                    + "Restart from your last good state; save earlier (or lower known_good_healthy_steps) to have one sooner";
        }
        return cause + ". No known-good checkpoint exists to roll back to: keep the Python client's in-memory "
                + "snapshots on, or register checkpoints (guard.save_checkpoint / guard.checkpoint_saved; the Lightning "
                + "and Hugging Face callbacks register their framework's saves, Lightning's ModelCheckpoint without "
                + "save_weights_only; RegisterCheckpoint over gRPC). One becomes known-good after it verifies clean and "
                + policy.knownGoodHealthySteps() + " healthy steps follow it. Then restart from your last good state";
    }

    String exhaustedReason(String cause, CheckpointCatalog.RollbackTarget target, Policy policy) {
        return cause + ". Already rolled back " + attempts + " time(s) within "
                + policy.rollbackWindowSteps() + " steps and the problem came back: lower the learning rate, "
                + "tighten clipping, or inspect the data after position " + target.dataPosition()
                + " before resuming from checkpoint " + target.checkpointId();
    }

    static String orderedReason(RollbackPlan plan, String cause) {
        return String.format("rolling back to checkpoint %s (step %d), attempt %d: skip %d batches, LR x%.3g, "
                        + "re-warm over %d steps. Cause: %s", plan.checkpointId(), plan.checkpointStep(), plan.attempt(),
                plan.skipBatches(), plan.lrFactor(), plan.rewarmSteps(), cause);
    }

    static String confirmedReason(RollbackPlan done, long step) {
        String confirmed = "rollback to checkpoint " + done.checkpointId() + " (step "
                + done.checkpointStep() + ", attempt " + done.attempt()
                + ") confirmed: every rank resumed, first report at step " + step;
        if (step <= done.checkpointStep()) {
            // A trainer resumes at the restored step + 1: one that resumed earlier restored an older state
            // than the plan's (a framework's loader falls back when the ordered file was deleted or rewritten
            // after it was verified), and the record must say which state the run now trains from.
            return confirmed + ", before the ordered checkpoint's step: the trainer restored an older state (step "
                    + (step - 1) + ") instead, as a trainer does when the ordered checkpoint's files were deleted or "
                    + "rewritten after they were verified; re-warming";
        }
        return confirmed + "; re-warming";
    }

    private void awaitEveryRank() {
        ranksToConfirm.clear();
        for (int r = 0; r < worldSize; r++) {
            ranksToConfirm.add(r);
        }
    }
}
