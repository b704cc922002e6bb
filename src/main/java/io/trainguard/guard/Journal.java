package io.trainguard.guard;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.StepRecord;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;

/** The engine's durable memory: runs, every step's summary and verdict, incidents. */
public interface Journal {

    /** Incident ids are allocated up front so a verdict can name its incidents before they are written. */
    long nextIncidentId();

    /** Queues a write; the future completes once it is committed. Writes commit in submission order. */
    CompletableFuture<Void> write(JournalWrite write);

    List<RunSnapshot> loadRuns();

    /** The newest {@code limit} steps of one rank, oldest first, to rebuild statistics after a restart. */
    List<StepRecord> recentSteps(String runId, int rank, int limit);

    /**
     * The newest steps of every rank that has any, by rank, oldest first: what a restart replays.
     * Ranks without steps are absent, so a run opened with a huge world size costs nothing here.
     * Journals on a database answer it in one query; this default asks rank by rank.
     */
    default Map<Integer, List<StepRecord>> recentStepsByRank(String runId, int worldSize, int limit) {
        Map<Integer, List<StepRecord>> out = new TreeMap<>();
        for (int rank = 0; rank < worldSize; rank++) {
            List<StepRecord> steps = recentSteps(runId, rank, limit);
            if (!steps.isEmpty()) {
                out.put(rank, steps);
            }
        }
        return out;
    }

    /** The newest {@code limit} incidents of a run, newest first. */
    List<Incident> incidents(String runId, int limit);

    /**
     * The steps from {@code fromStep} on that have an incident of the given kinds, by rank: a restart's
     * replay tells a detector's skip from a GradScaler's own overflow by them. Bounded by step, not by
     * a count, so that no replayed step's incident is cut off however many one step has.
     */
    default Map<Integer, Set<Long>> incidentStepsByRank(String runId, Set<IncidentKind> kinds, long fromStep) {
        Map<Integer, Set<Long>> out = new HashMap<>();
        for (Incident i : incidents(runId, Integer.MAX_VALUE)) {
            if (kinds.contains(i.kind()) && i.step() >= fromStep) {
                out.computeIfAbsent(i.rank(), r -> new HashSet<>()).add(i.step());
            }
        }
        return out;
    }
}
