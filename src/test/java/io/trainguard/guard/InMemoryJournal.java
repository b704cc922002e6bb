package io.trainguard.guard;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.StepRecord;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.atomic.AtomicLong;

/** A journal kept in memory, for engine tests that need no disk. The SQLite one has its own tests. */
final class InMemoryJournal implements Journal {
    final Map<String, RunSnapshot> runs = new LinkedHashMap<>();
    final List<StepRecord> steps = new ArrayList<>();
    final List<Incident> incidents = new ArrayList<>();
    private final AtomicLong ids = new AtomicLong();
    boolean failWrites;

    @Override
    public long nextIncidentId() {
        return ids.incrementAndGet();
    }

    @Override
    public synchronized CompletableFuture<Void> write(JournalWrite write) {
        if (failWrites) {
            return CompletableFuture.failedFuture(new IllegalStateException("disk full"));
        }
        if (write.run() != null) {
            runs.put(write.run().runId(), write.run());
        }
        steps.addAll(write.steps());
        incidents.addAll(write.incidents());
        return CompletableFuture.completedFuture(null);
    }

    @Override
    public synchronized List<RunSnapshot> loadRuns() {
        return List.copyOf(runs.values());
    }

    @Override
    public synchronized List<StepRecord> recentSteps(String runId, int rank, int limit) {
        List<StepRecord> mine = steps.stream().filter(s -> s.runId().equals(runId) && s.rank() == rank).toList();
        return mine.subList(Math.max(0, mine.size() - limit), mine.size());
    }

    @Override
    public synchronized List<Incident> incidents(String runId, int limit) {
        return incidents.stream().filter(i -> i.runId().equals(runId))
                .sorted(Comparator.comparingLong(Incident::id).reversed()).limit(limit).toList();
    }
}
