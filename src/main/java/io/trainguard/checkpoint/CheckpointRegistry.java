package io.trainguard.checkpoint;

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
            byId.put(r.id(), r);
        }
    }

    /**
     * Re-queues the verifications a restart interrupted (REGISTERED or VERIFYING in the journal).
     * Call once after construction, when the sidecar is ready to serve.
     */
    public synchronized void resumePending() {
        for (CheckpointRecord r : new ArrayList<>(byId.values())) {
            if (r.state() == CheckpointState.VERIFYING) {
                r = save(r.moveTo(CheckpointState.REGISTERED, "verification interrupted by a restart; queued again",
                        now()));
            }
            if (r.state() == CheckpointState.REGISTERED) {
                startVerification(r);
            }
        }
    }

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
     * @throws VerificationQueueFullException when too many verifications are pending
     */
    public synchronized CheckpointRecord register(String runId, long step, CheckpointFormat format,
            List<CheckpointFileSpec> files, long dataPosition) {
        if (files == null || files.isEmpty()) {
            throw new IllegalArgumentException("a checkpoint needs at least one file");
        }
        for (CheckpointFileSpec f : files) {
            paths.resolveFileOrDirectory(f.path());
        }
        for (CheckpointRecord r : byId.values()) {
            if (r.runId().equals(runId) && r.step() == step && r.files().equals(files)) {
                return r;
            }
        }
        Instant now = now();
        String id = "ckpt-" + step + "-" + UUID.randomUUID().toString().substring(0, 8);
        CheckpointRecord r = new CheckpointRecord(id, runId, step, format, List.copyOf(files), dataPosition,
                CheckpointState.REGISTERED, "", now, now, 0, step, -1, Map.of(), List.of(), 0, 0);
        store.insert(r);
        byId.put(id, r);
        // torch.save files are verified too (zip layout); the verifier says UNVERIFIABLE for legacy pickles
        return startVerification(r);
    }

    private CheckpointRecord startVerification(CheckpointRecord r) {
        CheckpointRecord verifying = save(r.moveTo(CheckpointState.VERIFYING, "", now()));
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
     */
    public synchronized void onHealthyStep(String runId, long step) {
        Instant now = null;
        // No copy of the map: save() and put() only replace values of existing keys, which does
        // not disturb the iteration (called on every healthy step).
        for (CheckpointRecord r : byId.values()) {
            if (!r.runId().equals(runId) || step <= r.lastCountedStep() || r.firstUnhealthyStep() >= 0) {
                continue;
            }
            if (r.state() != CheckpointState.REGISTERED && r.state() != CheckpointState.VERIFYING
                    && r.state() != CheckpointState.VERIFIED) {
                continue;
            }
            now = now == null ? now() : now;
            CheckpointRecord counted = r.withHealthy(r.healthyStepsSince() + 1, step, now);
            CheckpointRecord promoted = promoteIfEarned(counted, now);
            if (promoted != counted) {
                save(promoted);
            } else {
                byId.put(r.id(), counted); // counts are journaled on promotion only: one write per step is too many
            }
        }
    }

    /**
     * A step was non-finite (or otherwise unhealthy). Every checkpoint of the run below that step
     * and not yet KNOWN_GOOD loses its chance: it may hold the cause, so it is never a rollback
     * target. Verified ones become REJECTED now, those still verifying when verification ends.
     */
    public synchronized void onUnhealthyStep(String runId, long step) {
        Instant now = null;
        for (CheckpointRecord r : byId.values()) { // values replaced only, as in onHealthyStep
            if (!r.runId().equals(runId) || r.step() >= step || r.firstUnhealthyStep() >= 0) {
                continue;
            }
            now = now == null ? now() : now;
            switch (r.state()) {
                case REGISTERED:
                case VERIFYING:
                    save(r.withUnhealthy(step, now));
                    break;
                case VERIFIED:
                    CheckpointRecord marked = r.withUnhealthy(step, now);
                    save(marked.moveTo(CheckpointState.REJECTED, unhealthyReason(marked, step), now));
                    break;
                default:
                    break;
            }
        }
    }

    private String unhealthyReason(CheckpointRecord r, long unhealthyStep) {
        return "step " + unhealthyStep + " was non-finite after " + r.healthyStepsSince() + " of "
                + required(r.runId()) + " healthy steps since this checkpoint; not a rollback target";
    }

    private CheckpointRecord promoteIfEarned(CheckpointRecord r, Instant now) {
        if (r.state() == CheckpointState.VERIFIED && r.healthyStepsSince() >= required(r.runId())) {
            LOG.infof("checkpoint %s (run %s, step %d) is known-good after %d healthy steps", r.id(), r.runId(),
                    r.step(), r.healthyStepsSince());
            return r.moveTo(CheckpointState.KNOWN_GOOD, "", now);
        }
        return r;
    }

    /** The rollback target: the KNOWN_GOOD checkpoint of the run with the highest step. */
    public synchronized Optional<CheckpointRecord> newestKnownGood(String runId) {
        return byId.values().stream()
                .filter(r -> r.runId().equals(runId) && r.state() == CheckpointState.KNOWN_GOOD)
                .max(Comparator.comparingLong(CheckpointRecord::step)
                        .thenComparing(CheckpointRecord::registeredAt));
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
        byId.put(r.id(), r);
        return r;
    }

    private Instant now() {
        return clock.instant();
    }
}
