package io.trainguard.checkpoint;

import java.util.Collection;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.Predicate;

/**
 * The newest checkpoint of each run among those in the states {@code admits} takes, published as a
 * value the engine reads without a lock on every step (the rollback target, the one on its way to
 * known-good). Updated under the registry's lock whenever a record changes.
 */
final class NewestPerRun {
    private final Map<String, CheckpointRecord> newest = new ConcurrentHashMap<>();
    private final Predicate<CheckpointState> admits;

    NewestPerRun(Predicate<CheckpointState> admits) {
        this.admits = admits;
    }

    Optional<CheckpointRecord> get(String runId) {
        return Optional.ofNullable(newest.get(runId));
    }

    /** {@code r} changed; when it leaves the admitted states the next newest of {@code all} takes its place. */
    void update(CheckpointRecord r, Collection<CheckpointRecord> all) {
        if (admits.test(r.state())) {
            newest.merge(r.runId(), r, NewestPerRun::newer);
            return;
        }
        CheckpointRecord cached = newest.get(r.runId());
        if (cached != null && cached.id().equals(r.id())) {
            newest.remove(r.runId());
            all.stream().filter(c -> c.runId().equals(r.runId()) && admits.test(c.state()))
                    .forEach(c -> newest.merge(c.runId(), c, NewestPerRun::newer));
        }
    }

    static CheckpointRecord newer(CheckpointRecord a, CheckpointRecord b) {
        return b.step() > a.step() || b.step() == a.step() && b.registeredAt().compareTo(a.registeredAt()) >= 0 ? b : a;
    }
}
