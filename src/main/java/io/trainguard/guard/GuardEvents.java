package io.trainguard.guard;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.Verdict;

/** What observers (metrics, logs) hear from the engine. Implementations must be cheap and never throw. */
public interface GuardEvents {

    void stepDecided(StepReport report, Verdict verdict, long decisionNanos);

    void incident(Incident incident);

    void stateChanged(String runId, RunState from, RunState to, String reason);

    /**
     * A run not closed was reloaded from the journal at start, in {@code state}: observers that keep
     * per-run series (the HALTED alert's gauge) must have it before its next event, which a halted
     * trainer never sends.
     */
    default void restored(String runId, RunState state) {
    }

    GuardEvents NONE = new GuardEvents() {
        @Override
        public void stepDecided(StepReport report, Verdict verdict, long decisionNanos) {
        }

        @Override
        public void incident(Incident incident) {
        }

        @Override
        public void stateChanged(String runId, RunState from, RunState to, String reason) {
        }
    };
}
