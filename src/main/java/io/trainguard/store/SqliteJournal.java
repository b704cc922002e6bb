package io.trainguard.store;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.datatype.jsr310.JavaTimeModule;
import io.trainguard.guard.Journal;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.StepRecord;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.locks.LockSupport;
import org.jboss.logging.Logger;

/**
 * The journal on SQLite in WAL mode. One writer thread owns the write connection and commits
 * whatever has queued up in one transaction (group commit): thousands of step reports a second
 * cost a handful of commits. With synchronous=NORMAL a commit is in the OS once the WAL write
 * returns, so it survives kill -9 of the sidecar; {@code synchronous=FULL} also survives power loss.
 *
 * <p>This class is the queue, the writer thread and what it does when a commit fails; the write
 * connection's life cycle (replaced after a failed commit) is {@link JournalWriteConnection}, the
 * binding of a batch's rows {@link BatchCommitter}, and the queries {@link JournalReads}.
 */
public final class SqliteJournal implements Journal, AutoCloseable {
    private static final Logger LOG = Logger.getLogger(SqliteJournal.class);
    private static final int MAX_BATCH = 4096;
    private static final long LINGER_NANOS = 2_000_000L;
    private static final long IDLE_PARK_NANOS = 50_000_000L;
    /** While the journal is failing, how often the idle writer tries a small write to see it is back. */
    private static final long PROBE_INTERVAL_NANOS = 1_000_000_000L;

    record Pending(JournalWrite write, CompletableFuture<Void> done) {
    }

    private final String url;
    /** Owned by the writer thread after construction. */
    private final JournalWriteConnection writeConnection;
    private final BatchCommitter committer;
    private final JournalReads reads;
    private final java.util.concurrent.ConcurrentLinkedQueue<Pending> queue = new java.util.concurrent.ConcurrentLinkedQueue<>();
    private final java.util.concurrent.atomic.AtomicInteger queued = new java.util.concurrent.atomic.AtomicInteger();
    private final int queueCapacity;
    private final AtomicLong incidentIds = new AtomicLong();
    private final Thread writer;
    private volatile boolean running = true;
    private volatile Throwable lastFailure;

    public SqliteJournal(Path file, String synchronous, int queueCapacity) {
        // one mapper for what the writer serializes and the reads parse back
        ObjectMapper json = new ObjectMapper().registerModule(new JavaTimeModule())
                .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);
        try {
            Path parent = file.toAbsolutePath().getParent();
            if (parent != null) {
                Files.createDirectories(parent);
            }
            url = "jdbc:sqlite:" + file.toAbsolutePath();
            // Registers the driver with DriverManager from this class loader too: a restarted app
            // (a Quarkus test profile) has a new one, and DriverManager refuses drivers it cannot see.
            Class.forName("org.sqlite.JDBC");
            writeConnection = new JournalWriteConnection(url, synchronous); // creates the schema
            reads = new JournalReads(url, json);
            incidentIds.set(reads.maxIncidentId());
        } catch (SQLException | IOException | ClassNotFoundException e) {
            throw new IllegalStateException("cannot open the journal at " + file.toAbsolutePath() + ": " + e.getMessage()
                    + " (set trainguard.journal.path to a writable file)", e);
        }
        committer = new BatchCommitter(writeConnection, json);
        this.queueCapacity = queueCapacity;
        writer = new Thread(this::writeLoop, "trainguard-journal-writer");
        writer.setDaemon(true);
        writer.start();
    }

    @Override
    public long nextIncidentId() {
        return incidentIds.incrementAndGet();
    }

    @Override
    public CompletableFuture<Void> write(JournalWrite write) {
        CompletableFuture<Void> done = new CompletableFuture<>();
        if (!running) {
            done.completeExceptionally(new IllegalStateException("journal is closed"));
            return done;
        }
        // Back-pressure instead of unbounded memory: a trainer outrunning the disk waits here.
        long giveUp = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
        while (queued.get() >= queueCapacity) {
            if (System.nanoTime() > giveUp || Thread.currentThread().isInterrupted()) {
                // a routine step's caller does not look at the future: say here that a record is lost
                LOG.warnf("journal queue full for 5 s (%d writes): dropping a write of run %s", queueCapacity,
                        write.steps().isEmpty() ? "?" : write.steps().get(0).runId());
                done.completeExceptionally(new IllegalStateException("journal queue full for 5 s"));
                return done;
            }
            LockSupport.parkNanos(100_000);
        }
        queued.incrementAndGet();
        queue.add(new Pending(write, done));
        // Routine healthy steps do not wake the writer (it wakes every LINGER_NANOS anyway): one
        // futex wake-up per report was a measurable share of a lock-step report's cost.
        if (write.awaited()) {
            LockSupport.unpark(writer);
        }
        return done;
    }

    public boolean healthy() {
        return writerAlive() && lastFailure == null;
    }

    /**
     * The writer thread runs: the journal can recover by itself (a full disk that frees up). False
     * only after close or a bug that ended the thread, which a restart does cure.
     */
    public boolean writerAlive() {
        return running && writer.isAlive();
    }

    public int queued() {
        return queued.get();
    }

    public Throwable lastFailure() {
        return lastFailure;
    }

    private void writeLoop() {
        List<Pending> batch = new ArrayList<>(MAX_BATCH);
        int idleRounds = 0;
        long lastProbe = System.nanoTime();
        while (running || !queue.isEmpty()) {
            Pending next;
            while (batch.size() < MAX_BATCH && (next = queue.poll()) != null) {
                batch.add(next);
            }
            if (batch.isEmpty()) {
                if (lastFailure != null && System.nanoTime() - lastProbe > PROBE_INTERVAL_NANOS) {
                    // Nobody may write for a while after a disk-full: find out ourselves that it is
                    // back, so readiness turns UP again without waiting for a verdict to fail.
                    lastProbe = System.nanoTime();
                    probe();
                }
                // Group commit: sleep until a write someone waits for unparks us, or LINGER_NANOS
                // (longer once idle, so an idle sidecar does not wake 500 times a second).
                LockSupport.parkNanos(this, ++idleRounds > 50 ? IDLE_PARK_NANOS : LINGER_NANOS);
                continue;
            }
            idleRounds = 0;
            queued.addAndGet(-batch.size());
            try {
                committer.commit(batch);
                lastFailure = null;
                batch.forEach(p -> p.done().complete(null));
            } catch (Exception e) {
                if (lastFailure == null) {
                    LOG.errorf(e, "journal commit of %d writes failed", batch.size());
                } else {
                    LOG.debugf("journal commit of %d writes failed again: %s", batch.size(), e.getMessage());
                }
                lastFailure = e;
                writeConnection.recover();
                lastProbe = System.nanoTime();
                batch.forEach(p -> p.done().completeExceptionally(e));
            } finally {
                batch.clear();
            }
        }
    }

    /** While failing: one tiny committed write; when it succeeds the journal is healthy again. */
    private void probe() {
        try {
            writeConnection.probe();
            LOG.infof("journal writable again after: %s", lastFailure == null ? "?" : lastFailure.getMessage());
            lastFailure = null;
        } catch (SQLException e) {
            lastFailure = e;
            writeConnection.recover();
        }
    }

    @Override
    public List<RunSnapshot> loadRuns() {
        return reads.loadRuns();
    }

    @Override
    public List<StepRecord> recentSteps(String runId, int rank, int limit) {
        return reads.recentSteps(runId, rank, limit);
    }

    @Override
    public Map<Integer, List<StepRecord>> recentStepsByRank(String runId, int worldSize, int limit) {
        return reads.recentStepsByRank(runId, worldSize, limit);
    }

    @Override
    public List<Incident> incidents(String runId, int limit) {
        return reads.incidents(runId, limit);
    }

    @Override
    public Map<Integer, Set<Long>> incidentStepsByRank(String runId, Set<IncidentKind> kinds, long fromStep) {
        return reads.incidentStepsByRank(runId, kinds, fromStep);
    }

    /**
     * Journal retention: deletes runs CLOSED before {@code closedBefore} with their steps and
     * incidents, so the journal and the start time stay bounded over months of runs. Runs not
     * closed are kept whatever their age (a paused run is not garbage). Returns the runs removed.
     */
    public int expireClosedRuns(Instant closedBefore) {
        List<String> expired = reads.closedRunsBefore(closedBefore);
        if (expired.isEmpty()) {
            return 0;
        }
        // on a connection of its own (WAL: beside the writer); busy_timeout covers the overlap
        try (Connection c = openConnection()) {
            c.setAutoCommit(false);
            for (String table : List.of("steps", "incidents", "runs")) {
                try (PreparedStatement del = c.prepareStatement("DELETE FROM " + table + " WHERE run_id=?")) {
                    for (String run : expired) {
                        del.setString(1, run);
                        del.addBatch();
                    }
                    del.executeBatch();
                }
            }
            c.commit();
        } catch (SQLException e) {
            throw new IllegalStateException("journal retention failed: " + e.getMessage(), e);
        }
        LOG.infof("journal retention: removed %d closed run(s) last changed before %s", expired.size(), closedBefore);
        return expired.size();
    }

    /** A second connection on the same file, for reading other journal tables (checkpoints); writes go through {@link #write}. */
    public Connection openConnection() throws SQLException {
        Connection c = DriverManager.getConnection(url);
        try (Statement s = c.createStatement()) {
            s.execute("PRAGMA busy_timeout=5000");
        }
        return c;
    }

    @Override
    public void close() {
        running = false;
        try {
            writer.join(10_000);
            writeConnection.close();
            reads.close();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (SQLException e) {
            LOG.warn("closing the journal: " + e.getMessage());
        }
    }
}
