package io.trainguard.guard;

import java.util.List;

/**
 * One atomic journal entry: the run as it now stands, plus what happened to get it there.
 *
 * @param snapshotDue false for routine healthy steps: the journal may then skip re-writing the run
 *                    snapshot for a few hundred milliseconds (the step rows themselves are always
 *                    written, and a restart takes the last step from them)
 */
public record JournalWrite(RunSnapshot run, List<StepRecord> steps, List<Incident> incidents, boolean snapshotDue) {

    public JournalWrite(RunSnapshot run, List<StepRecord> steps, List<Incident> incidents) {
        this(run, steps, incidents, true);
    }
}
