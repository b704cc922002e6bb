package io.trainguard.checkpoint;

import io.trainguard.guard.policy.Policy;
import java.time.Clock;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.UUID;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Function;
import org.jboss.logging.Logger;

/**
 * The checkpoints of every run and their life cycle: REGISTERED -> VERIFYING -> VERIFIED ->
 * KNOWN_GOOD, or REJECTED / UNVERIFIABLE with the reason. A checkpoint becomes KNOWN_GOOD only
 * once it verified clean and {@code healthyStepsRequired} healthy steps with a step number above
 * its own followed it, with no non-finite step in between; only KNOWN_GOOD checkpoints are
 * rollback targets. State changes are written to the {@link CheckpointStore} before they are
 * visible; healthy-step counts are written when they promote (a restart may only delay a promotion,
 * never cause one).
 */
public final class CheckpointRegistry {
    private static final Logger LOG = Logger.getLogger(CheckpointRegistry.class);

    private final CheckpointStore store;
    private final CheckpointVerifier verifier;
    private final PathPolicy paths;
    private final int defaultHealthyStepsRequired;
    private final Clock clock;
    private final Map<String, CheckpointRecord> byId = new LinkedHashMap<>();
    private final Map<String, Integer> healthyStepsRequired = new ConcurrentHashMap<>();
    private final NewestPerRun newestKnownGood = new NewestPerRun(s -> s == CheckpointState.KNOWN_GOOD);
    /** Registered, verifying, or verified and owed healthy steps: named by a HALT for want of a target. */
    private final NewestPerRun newestPending = new NewestPerRun(
            s -> s == CheckpointState.REGISTERED || s == CheckpointState.VERIFYING || s == CheckpointState.VERIFIED);

    /**
     * @param healthyStepsRequired trainguard.checkpoint.known-good-healthy-steps; a run's Policy may
     *                             override it with {@link #setHealthyStepsRequired}
     */
    public CheckpointRegistry(CheckpointStore store, CheckpointVerifier verifier, PathPolicy paths,
            int healthyStepsRequired, Clock clock) {
        if (healthyStepsRequired < 0) {
            throw new IllegalArgumentException("known-good-healthy-steps must be >= 0");
        }
        this.store = store;
        this.verifier = verifier;
        this.paths = paths;
        this.defaultHealthyStepsRequired = healthyStepsRequired;
        this.clock = clock;
        for (CheckpointRecord r : store.loadAll()) {
            remember(r);
        }
    }

    /**
     * Re-queues the verifications a restart interrupted (REGISTERED or VERIFYING in the journal).
     * Call once after construction, when the sidecar is ready to serve.
     */
    public synchronized void resumePending() {
        for (CheckpointRecord r : new ArrayList<>(byId.values())) {
            if (r.state() == CheckpointState.VERIFYING && RETRY_REASON.equals(r.stateReason())) {
                // The second attempt was interrupted too: the file may be what kills the sidecar
                // (an out-of-memory crash loop). Record it as failed; never queue it a third time.
                LOG.errorf("checkpoint %s (run %s, step %d): verification interrupted twice; recorded as failed, "
                        + "not retried", r.id(), r.runId(), r.step());
                save(r.moveTo(CheckpointState.UNVERIFIABLE, "verification failed twice: the sidecar stopped while "
                        + "verifying this checkpoint on two starts (out of memory or killed?); not retried. Check the "
                        + "file, then register it again under a new step if it should be verified", now()));
                continue;
            }
            boolean retry = r.state() == CheckpointState.VERIFYING;
            if (retry) {
                r = save(r.moveTo(CheckpointState.REGISTERED, "verification interrupted by a restart; queued again",
                        now()));
            }
            if (r.state() == CheckpointState.REGISTERED) {
                try {
                    startVerification(r, retry ? RETRY_REASON : "");
                } catch (VerificationQueueFullException e) {
                    // more pending than the queue holds: stays REGISTERED for the next start; the
                    // sidecar becomes ready whatever is queued
                    LOG.warnf("checkpoint %s: %s", r.id(), e.getMessage());
                }
            }
        }
    }

    /** The reason a second verification attempt carries, so a third is never made. */
    static final String RETRY_REASON = "second verification attempt after an interrupted one";

    public void setHealthyStepsRequired(String runId, int steps) {
        healthyStepsRequired.put(runId, steps);
    }

    private int required(String runId) {
        return healthyStepsRequired.getOrDefault(runId, defaultHealthyStepsRequired);
    }

    /**
     * Registers a checkpoint and starts verifying it in the background. Every path is checked
     * against the roots now: a refused path throws {@link PathRefusedException} and nothing is
     * recorded. Registering the same run, step and files again returns the existing record.
     *
     * @param runHasDecidedSteps whether the engine has decided any step of the run, as the run's
     *                           journaled state says (so a sidecar restart does not forget it); only
     *                           a MEMORY snapshot of a run with none is the state it starts from
     * @throws VerificationQueueFullException when too many verifications are pending
     */
    public synchronized CheckpointRecord register(String runId, long step, CheckpointFormat format,
            List<CheckpointFileSpec> files, long dataPosition, boolean runHasDecidedSteps) {
        if (files == null || files.isEmpty()) {
            throw new IllegalArgumentException("a checkpoint needs at least one file");
        }
        if (format == CheckpointFormat.MEMORY) {
            MemorySnapshots.checkSlot(files);
        } else {
            for (CheckpointFileSpec f : files) {
                paths.resolveFileOrDirectory(f.path());
            }
        }
        for (CheckpointRecord r : byId.values()) {
            // The same registration again (a retry) while it is in flight. A file checkpoint registered
            // again once settled is a new save to the same path (a loop that jumped back after a
            // rollback, a restarted trainer re-writing checkpoint-N/): its content is verified anew and
            // the record of the old content is evicted below, not handed back unverified.
            if (r.runId().equals(runId) && r.step() == step && r.files().equals(files)
                    && (format == CheckpointFormat.MEMORY || r.state() == CheckpointState.REGISTERED
                            || r.state() == CheckpointState.VERIFYING)) {
                return r;
            }
        }
        Instant now = now();
        String id = "ckpt-" + step + "-" + UUID.randomUUID().toString().substring(0, 8);
        CheckpointRecord r = new CheckpointRecord(id, runId, step, format, List.copyOf(files), dataPosition,
                CheckpointState.REGISTERED, "", now, now, 0, step, -1, Map.of(), List.of(), 0, 0);
        List<String> written = files.stream().map(CheckpointFileSpec::path).toList();
        evictWhere(runId, c -> format == CheckpointFormat.MEMORY ? EvictionReasons.slotRegistered(c, written.get(0), step)
                : EvictionReasons.rewritten(c, written, step), now);
        // rotation deletes files right after the save that registers the next one: checked at every
        // registration (snapshots too, so a run that saves files rarely learns it within a snapshot interval)
        evictWhere(runId, c -> c.state() == CheckpointState.KNOWN_GOOD || c.state() == CheckpointState.VERIFIED
                ? EvictionReasons.deleted(c) : null, now);
        store.insert(r);
        byId.put(id, r);
        if (format == CheckpointFormat.MEMORY) {
            // Nothing on disk to read: the trainer checked the snapshot finite before registering it.
            // From here on it is promoted (or rejected) by the same healthy-step rule as files.
            r = save(r.moveTo(CheckpointState.VERIFYING, "", now).moveTo(CheckpointState.VERIFIED,
                    "in-memory snapshot, checked finite by the trainer", now));
            if (!runHasDecidedSteps) {
                // The state the trainer starts from, registered before any step of the run was decided:
                // no update has been applied to it, so no fault can hide in it. Waiting for healthy steps
                // would leave a run that diverges at step 1 or 2 nothing to roll back to (issue 16).
                // The caller asks the run, not this registry: after a sidecar restart a run at step
                // 5000 has decided steps although this process has counted none.
                return save(r.moveTo(CheckpointState.KNOWN_GOOD,
                        "the state the run started from: no update applied yet", now));
            }
            return save(promoteIfEarned(r, now));
        }
        // torch.save files are verified too (zip layout); the verifier says UNVERIFIABLE for legacy pickles
        return startVerification(r, "");
    }

    private CheckpointRecord startVerification(CheckpointRecord r, String reason) {
        CheckpointRecord verifying = save(r.moveTo(CheckpointState.VERIFYING, reason, now()));
        verifier.submit(r.id(), r.format(), r.files(), null)
                .whenComplete((result, error) -> finish(r.id(), result, error));
        return verifying;
    }

    private synchronized void finish(String id, VerificationResult result, Throwable error) {
        CheckpointRecord r = byId.get(id);
        if (r == null || r.state() != CheckpointState.VERIFYING) {
            return;
        }
        Instant now = now();
        if (error != null) {
            LOG.errorf(error, "checkpoint %s: verification failed inside the sidecar", id);
            save(r.moveTo(CheckpointState.UNVERIFIABLE, "verification failed inside the sidecar: " + error, now));
            return;
        }
        r = r.withResult(result, now);
        if (!result.ok()) {
            LOG.warnf("checkpoint %s (run %s, step %d) %s: %s", id, r.runId(), r.step(), result.outcome(),
                    result.reason());
            save(r.moveTo(result.outcome(), result.reason(), now));
            return;
        }
        if (r.firstUnhealthyStep() >= 0) {
            save(r.moveTo(CheckpointState.VERIFIED, "", now).moveTo(CheckpointState.REJECTED,
                    unhealthyReason(r, r.firstUnhealthyStep()), now));
            return;
        }
        r = r.moveTo(CheckpointState.VERIFIED, "", now);
        LOG.infof("checkpoint %s (run %s, step %d) verified: %d tensors, %d MB at %.2f GB/s", id, r.runId(),
                r.step(), r.tensors().size(), r.verifiedBytes() >> 20, r.verifyBytesPerSecond() / 1e9);
        save(promoteIfEarned(r, now));
    }

    /**
     * A step reported healthy. Counts for every checkpoint of the run not yet promoted whose step is
     * below it; each step is counted once even if reported again or replayed after a rollback.
     * Writes the promotions to the store itself; the engine's step path uses {@link #countStep}.
     */
    public synchronized void onHealthyStep(String runId, long step) {
        countStep(runId, step, true).forEach(store::update);
    }

    /**
     * A step was non-finite (or otherwise unhealthy). Every checkpoint of the run below that step
     * and not yet KNOWN_GOOD loses its chance: it may hold the cause, so it is never a rollback
     * target. Verified ones become REJECTED now, those still verifying when verification ends.
     */
    public synchronized void onUnhealthyStep(String runId, long step) {
        countStep(runId, step, false).forEach(store::update);
    }

    /**
     * Applies a decided step to the run's checkpoints in memory and returns the records whose
     * change must be journaled (promotions, rejections, unhealthy marks), for the caller to write
     * with the step itself. No I/O; healthy-step counts alone are journaled on promotion only.
     */
    public synchronized List<CheckpointRecord> countStep(String runId, long step, boolean healthy) {
        List<CheckpointRecord> changed = null;
        Instant now = null;
        // No copy of the map: only values of existing keys are replaced, which does not disturb the
        // iteration (called on every step).
        for (CheckpointRecord r : byId.values()) {
            if (!r.runId().equals(runId) || r.firstUnhealthyStep() >= 0) {
                continue;
            }
            CheckpointRecord next;
            if (healthy) {
                if (step <= r.lastCountedStep() || (r.state() != CheckpointState.REGISTERED
                        && r.state() != CheckpointState.VERIFYING && r.state() != CheckpointState.VERIFIED)) {
                    continue;
                }
                now = now == null ? now() : now;
                CheckpointRecord counted = r.withHealthy(r.healthyStepsSince() + 1, step, now);
                next = promoteIfEarned(counted, now);
                if (next == counted) {
                    byId.put(r.id(), counted); // counts are journaled on promotion only: one write per step is too many
                    continue;
                }
            } else {
                if (r.step() >= step) {
                    continue;
                }
                now = now == null ? now() : now;
                next = switch (r.state()) {
                    // healthy steps it had already earned while its verification was pending: a later
                    // unhealthy step says nothing about it (it becomes known-good once verified)
                    case REGISTERED, VERIFYING -> r.healthyStepsSince() >= required(r.runId()) ? null
                            : r.withUnhealthy(step, now);
                    case VERIFIED -> {
                        CheckpointRecord marked = r.withUnhealthy(step, now);
                        yield marked.moveTo(CheckpointState.REJECTED, unhealthyReason(marked, step), now);
                    }
                    default -> null;
                };
                if (next == null) {
                    continue;
                }
            }
            remember(next);
            changed = changed == null ? new ArrayList<>() : changed;
            changed.add(next);
        }
        return changed == null ? List.of() : changed;
    }

    /**
     * Rank {@code rank} re-opened the run from trainer process {@code instance}: the memory snapshots
     * other processes held for it are gone. Before, only the new process's own first snapshot evicted
     * them, so a process with snapshots off (or faulting before its first) was ordered back to one.
     */
    public synchronized void evictOtherProcesses(String runId, int rank, String instance) {
        evictWhere(runId, r -> EvictionReasons.rankReopened(r, rank, instance), now());
    }

    /**
     * The trainer could not restore it when a rollback ordered it (its files gone or changed since they
     * were verified, a loader's error): evicted, with the trainer's reason, so no rollback picks it again.
     * An id this run does not hold, or one already out of the running, changes nothing.
     */
    public synchronized void unrestorable(String runId, String checkpointId, String reason) {
        CheckpointRecord r = byId.get(checkpointId);
        if (r != null && r.runId().equals(runId) && r.state().canMoveTo(CheckpointState.EVICTED)) {
            save(r.moveTo(CheckpointState.EVICTED, "could not be restored: " + reason, now()));
        }
    }

    /** Evicts each checkpoint of {@code runId} that may still be evicted and {@code why} gives a reason for (null: kept). */
    private void evictWhere(String runId, Function<CheckpointRecord, String> why, Instant now) {
        for (CheckpointRecord r : List.copyOf(byId.values())) {
            if (r.runId().equals(runId) && r.state().canMoveTo(CheckpointState.EVICTED)) {
                String reason = why.apply(r);
                if (reason != null) {
                    save(r.moveTo(CheckpointState.EVICTED, reason, now));
                }
            }
        }
    }

    private String unhealthyReason(CheckpointRecord r, long unhealthyStep) {
        // a SKIP for a finite spike counts too: the checkpoint was not followed by the healthy steps it needs
        return "step " + unhealthyStep + " was unhealthy (skipped or worse) after " + r.healthyStepsSince() + " of "
                + required(r.runId()) + " healthy steps since this checkpoint; not a rollback target";
    }

    private CheckpointRecord promoteIfEarned(CheckpointRecord r, Instant now) {
        if (r.state() == CheckpointState.VERIFIED && r.healthyStepsSince() >= required(r.runId())) {
            String gone = EvictionReasons.deleted(r);
            if (gone != null) {
                LOG.infof("checkpoint %s (run %s, step %d) earned known-good but %s", r.id(), r.runId(), r.step(), gone);
                return r.moveTo(CheckpointState.EVICTED, gone, now);
            }
            LOG.infof("checkpoint %s (run %s, step %d) is known-good after %d healthy steps", r.id(), r.runId(),
                    r.step(), r.healthyStepsSince());
            return r.moveTo(CheckpointState.KNOWN_GOOD, "", now);
        }
        return r;
    }

    /**
     * The rollback target: the KNOWN_GOOD checkpoint of the run with the highest step. Lock-free (a
     * published value), so the engine reads it before it takes a run's lock, on every step.
     */
    public Optional<CheckpointRecord> newestKnownGood(String runId) {
        return newestKnownGood.get(runId);
    }

    /** The KNOWN_GOOD checkpoint of the run with the highest step below {@code step} (a scan: rarely asked). */
    public synchronized Optional<CheckpointRecord> newestKnownGoodBefore(String runId, long step) {
        return byId.values().stream()
                .filter(c -> c.runId().equals(runId) && c.state() == CheckpointState.KNOWN_GOOD && c.step() < step)
                .reduce(NewestPerRun::newer);
    }

    /**
     * The newest checkpoint of the run still on its way to KNOWN_GOOD (registered, verifying, or
     * verified and owed healthy steps), lock-free: a HALT for want of a target names it.
     */
    public Optional<CheckpointRecord> newestPending(String runId) {
        return newestPending.get(runId);
    }

    /** The healthy steps a checkpoint of {@code runId} needs after it to become known-good. */
    public int healthyStepsRequired(String runId) {
        return required(runId);
    }

    private void remember(CheckpointRecord r) {
        byId.put(r.id(), r);
        newestPending.update(r, byId.values());
        newestKnownGood.update(r, byId.values()); // an evicted in-memory target: the next newest takes its place
    }

    /** The run's checkpoints by step. */
    public synchronized List<CheckpointRecord> list(String runId) {
        return byId.values().stream().filter(r -> r.runId().equals(runId))
                .sorted(Comparator.comparingLong(CheckpointRecord::step)).toList();
    }

    public synchronized CheckpointRecord get(String checkpointId) {
        CheckpointRecord r = byId.get(checkpointId);
        if (r == null) {
            throw new CheckpointNotFoundException("no checkpoint " + checkpointId + "; list the run's checkpoints");
        }
        return r;
    }

    /** Progress while VERIFYING (empty when queued or finished). */
    public Optional<VerificationProgress> progress(String checkpointId) {
        return verifier.progress(checkpointId);
    }

    private CheckpointRecord save(CheckpointRecord r) {
        store.update(r);
        remember(r);
        return r;
    }

    private Instant now() {
        return clock.instant();
    }
}
