package io.trainguard.config;

import io.trainguard.store.SqliteJournal;
import io.trainguard.store.StepHistory;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.inject.Disposes;
import jakarta.enterprise.inject.Produces;
import jakarta.inject.Singleton;

/** The journal's read side for the history API and the run page (its own read-only connection). */
@ApplicationScoped
public class HistoryWiring {

    /** Takes the journal so the file and its tables exist before the read-only connection opens. */
    @Produces
    @Singleton
    StepHistory stepHistory(TrainguardConfig config, SqliteJournal journal) {
        return new StepHistory(config.journal().path());
    }

    void close(@Disposes StepHistory history) {
        history.close();
    }
}
