package io.trainguard.guard;

import java.util.List;

/** One atomic journal entry: the run as it now stands, plus what happened to get it there. */
public record JournalWrite(RunSnapshot run, List<StepRecord> steps, List<Incident> incidents) {
}
