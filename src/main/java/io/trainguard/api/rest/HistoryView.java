package io.trainguard.api.rest;

import io.trainguard.store.StepHistory;
import java.util.List;

/**
 * A run's history on one step axis: downsampled steps of one rank, and the run's incidents,
 * checkpoints (with their states) and rollbacks in the same range.
 */
public record HistoryView(
        String runId,
        String state,
        StepHistory.Range steps,
        List<StepHistory.Event> incidents,
        List<CheckpointMark> checkpoints,
        List<StepHistory.Event> rollbacks) {

    /** A checkpoint as a mark on the axis; the full record is under /api/runs/{id}/checkpoints. */
    public record CheckpointMark(String id, long step, String state, String stateReason) {
    }
}
