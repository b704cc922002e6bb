package io.trainguard.guard;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.StepRecord;
import java.util.ArrayList;
import java.util.List;

/**
 * One atomic journal entry: the run as it now stands, plus what happened to get it there.
 *
 * @param run     the run's snapshot, or null when it need not be rewritten (routine healthy steps
 *                rewrite it at most every few hundred milliseconds; a restart takes the newest
 *                steps from the step rows, which are always written)
 * @param rows    rows of other subsystems' tables (checkpoint state changes) committed with it
 * @param awaited someone waits for this commit (a course-changing verdict, a read barrier): the
 *                writer commits it at once instead of grouping it with later writes
 */
public record JournalWrite(RunSnapshot run, List<StepRecord> steps, List<Incident> incidents, List<JournalRow> rows,
                           boolean awaited) {

    public JournalWrite(RunSnapshot run, List<StepRecord> steps, List<Incident> incidents, boolean awaited) {
        this(run, steps, incidents, List.of(), awaited);
    }

    public JournalWrite(RunSnapshot run, List<StepRecord> steps, List<Incident> incidents) {
        this(run, steps, incidents, List.of(), true);
    }

    /** Only other subsystems' rows (e.g. a checkpoint registered or verified), awaited. */
    public static JournalWrite rows(List<JournalRow> rows) {
        return new JournalWrite(null, List.of(), List.of(), List.copyOf(rows), true);
    }

    public JournalWrite withRows(List<JournalRow> more) {
        if (more.isEmpty()) {
            return this;
        }
        List<JournalRow> all = new ArrayList<>(rows);
        all.addAll(more);
        return new JournalWrite(run, steps, incidents, List.copyOf(all), awaited);
    }
}
