package io.trainguard.checkpoint;

import io.trainguard.guard.Journal;
import io.trainguard.guard.JournalUnavailableException;
import io.trainguard.guard.JournalRow;
import io.trainguard.guard.JournalWrite;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * The checkpoint table written through the journal's one writer (one connection, one group commit
 * for a step and the checkpoint changes it caused); read at startup over a read connection.
 * Registrations and verification results wait for their commit; step-driven changes travel with
 * the step's own journal write ({@link #row}).
 */
public final class JournaledCheckpointStore implements CheckpointStore {
    private final Journal journal;
    private final CheckpointStore reads;
    private final Duration timeout;

    /** Creates the table through the journal (waits for it), then reads over {@code reads}. */
    public JournaledCheckpointStore(Journal journal, SqlConnections reads, Duration timeout) {
        this.journal = journal;
        this.timeout = timeout;
        await(JdbcCheckpointStore::createTables);
        this.reads = new JdbcCheckpointStore(reads); // its CREATE ... IF NOT EXISTS finds the table: reads only
    }

    /** The journal row that stores {@code r}. */
    public static JournalRow row(CheckpointRecord r) {
        return c -> JdbcCheckpointStore.upsert(c, r);
    }

    @Override
    public void insert(CheckpointRecord r) {
        await(row(r));
    }

    @Override
    public void update(CheckpointRecord r) {
        await(row(r));
    }

    @Override
    public List<CheckpointRecord> loadAll() {
        return reads.loadAll();
    }

    private void await(JournalRow row) {
        try {
            journal.write(JournalWrite.rows(List.of(row))).get(timeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new JournalUnavailableException("checkpoint journal: interrupted; retry the call", e);
        } catch (ExecutionException | TimeoutException e) {
            // UNAVAILABLE like a verdict the journal could not record: the call can be retried once the
            // volume has room again (an INTERNAL "bug" status flipped the client's protected state each time)
            Throwable cause = e instanceof ExecutionException ? e.getCause() : e;
            throw new JournalUnavailableException("checkpoint journal: " + cause.getMessage()
                    + " (check the journal volume: disk full? read-only?)", cause);
        }
    }
}
