package io.trainguard.guard;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.StepRecord;
import java.util.List;

/**
 * One atomic journal entry: the run as it now stands, plus what happened to get it there.
 *
 * @param run     the run's snapshot, or null when it need not be rewritten (routine healthy steps
 *                rewrite it at most every few hundred milliseconds; a restart takes the newest
 *                steps from the step rows, which are always written)
 * @param awaited someone waits for this commit (a course-changing verdict, a read barrier): the
 *                writer commits it at once instead of grouping it with later writes
 */
public record JournalWrite(RunSnapshot run, List<StepRecord> steps, List<Incident> incidents, boolean awaited) {

    public JournalWrite(RunSnapshot run, List<StepRecord> steps, List<Incident> incidents) {
        this(run, steps, incidents, true);
    }
}
