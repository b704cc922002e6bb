package io.trainguard.guard;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.run.RunDecider;
import java.util.Comparator;
import java.util.List;

/**
 * What operators and health checks read about the runs. A view still answers while the journal
 * cannot commit (a full disk): the run from memory, the incidents committed so far; an operator
 * needs it most right then.
 */
public final class RunReads {

    public record RunView(RunSnapshot run, List<Incident> incidents) {
    }

    private final GuardedRuns runs;
    private final Journal journal;
    private final DurableWrites durable;

    /** Reads {@code runs} and the journal it writes, waiting for its writes as it does. */
    public RunReads(GuardedRuns runs) {
        this.runs = runs;
        this.journal = runs.journal();
        this.durable = runs.durableWrites();
    }

    public List<RunSnapshot> list() {
        return runs.deciders().stream().map(RunDecider::snapshot)
                .sorted(Comparator.comparing(RunSnapshot::createdTime).thenComparing(RunSnapshot::runId)).toList();
    }

    public List<RunSnapshot> halted() {
        return list().stream().filter(s -> s.state() == RunState.HALTED).toList();
    }

    /** The run and its newest incidents, after everything already queued is committed when the journal can. */
    public RunView view(String runId, int incidentLimit) {
        RunDecider g = runs.run(runId);
        try {
            durable.barrier();
        } catch (JournalUnavailableException e) {
            // the journal cannot commit: answer from memory and what was committed (see the class comment)
        }
        List<Incident> incidents;
        try {
            incidents = journal.incidents(runId, incidentLimit <= 0 ? 50 : incidentLimit);
        } catch (RuntimeException e) {
            incidents = List.of();
        }
        return new RunView(g.snapshot(), incidents);
    }
}
