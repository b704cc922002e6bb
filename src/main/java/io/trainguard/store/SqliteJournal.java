package io.trainguard.store;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.datatype.jsr310.JavaTimeModule;
import io.trainguard.guard.Journal;
import io.trainguard.guard.JournalRow;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.model.StepRecord;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Types;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
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
 */
public final class SqliteJournal implements Journal, AutoCloseable {
    private static final Logger LOG = Logger.getLogger(SqliteJournal.class);
    private static final int MAX_BATCH = 4096;
    private static final long LINGER_NANOS = 2_000_000L;
    private static final long IDLE_PARK_NANOS = 50_000_000L;
    /** While the journal is failing, how often the idle writer tries a small write to see it is back. */
    private static final long PROBE_INTERVAL_NANOS = 1_000_000_000L;

    private record Pending(JournalWrite write, CompletableFuture<Void> done) {
    }

    private final ObjectMapper json = new ObjectMapper().registerModule(new JavaTimeModule())
            .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);
    private final String url;
    private final String synchronous;
    /** Owned by the writer thread after construction; reopened after a failed commit (see {@link #recover}). */
    private Connection writeConnection;
    private final Connection readConnection;
    /** Prepared once and used by the writer thread only (closing the connection closes them). */
    private PreparedStatement insertStep;
    private PreparedStatement insertIncident;
    private PreparedStatement upsertRun;
    private final java.util.concurrent.ConcurrentLinkedQueue<Pending> queue = new java.util.concurrent.ConcurrentLinkedQueue<>();
    private final java.util.concurrent.atomic.AtomicInteger queued = new java.util.concurrent.atomic.AtomicInteger();
    private final int queueCapacity;
    private final AtomicLong incidentIds = new AtomicLong();
    private final Thread writer;
    private volatile boolean running = true;
    private volatile Throwable lastFailure;

    public SqliteJournal(Path file, String synchronous, int queueCapacity) {
        try {
            Path parent = file.toAbsolutePath().getParent();
            if (parent != null) {
                Files.createDirectories(parent);
            }
            url = "jdbc:sqlite:" + file.toAbsolutePath();
            this.synchronous = synchronous;
            // Registers the driver with DriverManager from this class loader too: a restarted app
            // (a Quarkus test profile) has a new one, and DriverManager refuses drivers it cannot see.
            Class.forName("org.sqlite.JDBC");
            writeConnection = openWriter(true);
            readConnection = DriverManager.getConnection(url);
            try (Statement s = readConnection.createStatement()) {
                s.execute("PRAGMA busy_timeout=5000");
                try (ResultSet rs = s.executeQuery("SELECT COALESCE(MAX(id), 0) FROM incidents")) {
                    rs.next();
                    incidentIds.set(rs.getLong(1));
                }
            }
        } catch (SQLException | IOException | ClassNotFoundException e) {
            throw new IllegalStateException("cannot open the journal at " + file.toAbsolutePath() + ": " + e.getMessage()
                    + " (set trainguard.journal.path to a writable file)", e);
        }
        this.queueCapacity = queueCapacity;
        writer = new Thread(this::writeLoop, "trainguard-journal-writer");
        writer.setDaemon(true);
        writer.start();
    }

    private Connection openWriter(boolean createSchema) throws SQLException {
        Connection c = DriverManager.getConnection(url);
        try (Statement s = c.createStatement()) {
            s.execute("PRAGMA journal_mode=WAL");
            s.execute("PRAGMA synchronous=" + synchronous);
            s.execute("PRAGMA busy_timeout=5000");
            if (createSchema) {
                Schema.create(s);
            }
        } catch (SQLException e) {
            c.close();
            throw e;
        }
        c.setAutoCommit(false);
        return c;
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
                commit(batch);
                lastFailure = null;
                batch.forEach(p -> p.done().complete(null));
            } catch (Exception e) {
                if (lastFailure == null) {
                    LOG.errorf(e, "journal commit of %d writes failed", batch.size());
                } else {
                    LOG.debugf("journal commit of %d writes failed again: %s", batch.size(), e.getMessage());
                }
                lastFailure = e;
                recover();
                lastProbe = System.nanoTime();
                batch.forEach(p -> p.done().completeExceptionally(e));
            } finally {
                batch.clear();
            }
        }
    }

    /**
     * After a failed commit SQLite may already have rolled the transaction back on its own (a full
     * disk does that), and the driver's connection then answers every later commit with "cannot
     * commit - no transaction is active" until the process restarts. A fresh connection has no such
     * state: close the old one and open another (or leave it null and retry on the next write).
     */
    private void recover() {
        insertStep = null;
        insertIncident = null;
        upsertRun = null;
        if (writeConnection != null) {
            try {
                writeConnection.rollback();
            } catch (SQLException ignored) {
                // already rolled back by SQLite, or the connection is broken: it is replaced below
            }
            try {
                writeConnection.close();
            } catch (SQLException ignored) {
                // closing a broken connection; nothing else to do with it
            }
            writeConnection = null;
        }
        try {
            writeConnection = openWriter(false);
        } catch (SQLException e) {
            LOG.debugf("journal connection not reopened yet: %s", e.getMessage());
        }
    }

    /** One tiny committed write: succeeds once the disk has room and is writable again. */
    private void probe() {
        try {
            if (writeConnection == null) {
                writeConnection = openWriter(false);
            }
            try (PreparedStatement ps = writeConnection.prepareStatement(
                    "INSERT OR REPLACE INTO journal_probe(id, time_ms) VALUES (1, ?)")) {
                ps.setLong(1, System.currentTimeMillis());
                ps.executeUpdate();
            }
            writeConnection.commit();
            LOG.infof("journal writable again after: %s", lastFailure == null ? "?" : lastFailure.getMessage());
            lastFailure = null;
        } catch (SQLException e) {
            lastFailure = e;
            recover();
        }
    }

    private void prepareStatements() throws SQLException {
        if (writeConnection == null) {
            writeConnection = openWriter(false);
        }
        if (insertStep == null) {
            insertStep = writeConnection.prepareStatement("INSERT INTO steps(run_id, rank, step, loss, grad_norm, "
                    + "lr, loss_scale, action, clip, time_ms) VALUES (?,?,?,?,?,?,?,?,?,?)");
            insertIncident = writeConnection.prepareStatement("INSERT INTO incidents(id, run_id, rank, step, kind, "
                    + "severity, message, module, time_ms) VALUES (?,?,?,?,?,?,?,?,?)");
            upsertRun = writeConnection.prepareStatement("INSERT INTO runs(run_id, state, snapshot, updated_ms) "
                    + "VALUES (?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET state=excluded.state, "
                    + "snapshot=excluded.snapshot, updated_ms=excluded.updated_ms");
        }
    }

    private void commit(List<Pending> batch) throws SQLException, IOException {
        Map<String, RunSnapshot> runs = new LinkedHashMap<>();
        prepareStatements();
        PreparedStatement step = insertStep;
        PreparedStatement incident = insertIncident;
        try {
            for (Pending p : batch) {
                JournalWrite w = p.write();
                if (w.run() != null) {
                    runs.put(w.run().runId(), w.run()); // only the newest snapshot of a run matters
                }
                for (StepRecord s : w.steps()) {
                    step.setString(1, s.runId());
                    step.setInt(2, s.rank());
                    step.setLong(3, s.step());
                    setDouble(step, 4, s.loss());
                    setDouble(step, 5, s.gradNorm());
                    setDouble(step, 6, s.learningRate());
                    setDouble(step, 7, s.lossScale());
                    step.setString(8, s.action().name());
                    setDouble(step, 9, s.clipThreshold());
                    step.setLong(10, s.time().toEpochMilli());
                    step.addBatch();
                }
                for (Incident i : w.incidents()) {
                    incident.setLong(1, i.id());
                    incident.setString(2, i.runId());
                    incident.setInt(3, i.rank());
                    incident.setLong(4, i.step());
                    incident.setString(5, i.kind().name());
                    incident.setString(6, i.severity().name());
                    incident.setString(7, i.message());
                    incident.setString(8, i.module());
                    incident.setLong(9, i.time().toEpochMilli());
                    incident.addBatch();
                }
            }
            step.executeBatch();
            incident.executeBatch();
            for (RunSnapshot s : runs.values()) {
                upsertRun.setString(1, s.runId());
                upsertRun.setString(2, s.state().name());
                upsertRun.setString(3, json.writeValueAsString(s));
                upsertRun.setLong(4, s.updatedTime().toEpochMilli());
                upsertRun.addBatch();
            }
            if (!runs.isEmpty()) {
                upsertRun.executeBatch();
            }
            for (Pending p : batch) {
                for (JournalRow row : p.write().rows()) {
                    row.write(writeConnection); // other tables (checkpoints): same transaction as their step
                }
            }
        } catch (SQLException | IOException | RuntimeException e) {
            // leave nothing half-batched for the next commit
            for (PreparedStatement st : List.of(step, incident, upsertRun)) {
                try {
                    st.clearBatch();
                } catch (SQLException clear) {
                    e.addSuppressed(clear);
                }
            }
            throw e;
        }
        writeConnection.commit();
    }

    /** SQLite stores NaN as NULL; NULL reads back as NaN. */
    private static void setDouble(PreparedStatement ps, int index, double v) throws SQLException {
        if (Double.isNaN(v)) {
            ps.setNull(index, Types.REAL);
        } else {
            ps.setDouble(index, v);
        }
    }

    private static double getDouble(ResultSet rs, String column) throws SQLException {
        double v = rs.getDouble(column);
        return rs.wasNull() ? Double.NaN : v;
    }

    @Override
    public synchronized List<RunSnapshot> loadRuns() {
        List<RunSnapshot> out = new ArrayList<>();
        try (Statement s = readConnection.createStatement();
             ResultSet rs = s.executeQuery("SELECT snapshot FROM runs ORDER BY rowid")) {
            while (rs.next()) {
                out.add(json.readValue(rs.getString(1), RunSnapshot.class));
            }
        } catch (SQLException | IOException e) {
            throw new IllegalStateException("cannot read runs from the journal: " + e.getMessage(), e);
        }
        return out;
    }

    @Override
    public synchronized List<StepRecord> recentSteps(String runId, int rank, int limit) {
        List<StepRecord> out = new ArrayList<>();
        try (PreparedStatement ps = readConnection.prepareStatement(
                "SELECT * FROM steps WHERE run_id=? AND rank=? ORDER BY rowid DESC LIMIT ?")) {
            ps.setString(1, runId);
            ps.setInt(2, rank);
            ps.setInt(3, limit);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    out.add(new StepRecord(runId, rank, rs.getLong("step"), getDouble(rs, "loss"), getDouble(rs, "grad_norm"),
                            getDouble(rs, "lr"), getDouble(rs, "loss_scale"), Action.valueOf(rs.getString("action")),
                            getDouble(rs, "clip"), Instant.ofEpochMilli(rs.getLong("time_ms"))));
                }
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read steps from the journal: " + e.getMessage(), e);
        }
        Collections.reverse(out);
        return out;
    }

    /** Rows replayed per run at most: a huge world that really reported gets fewer steps per rank. */
    static final int MAX_REPLAY_ROWS = 1_000_000;

    @Override
    public synchronized Map<Integer, List<StepRecord>> recentStepsByRank(String runId, int worldSize, int limit) {
        Map<Integer, List<StepRecord>> out = new java.util.TreeMap<>();
        int reported;
        try (PreparedStatement count = readConnection.prepareStatement("SELECT COUNT(DISTINCT rank) FROM steps WHERE run_id=?")) {
            count.setString(1, runId);
            try (ResultSet rs = count.executeQuery()) {
                reported = rs.next() ? rs.getInt(1) : 0;
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read steps from the journal: " + e.getMessage(), e);
        }
        if (reported == 0) {
            return out;
        }
        int perRank = (int) Math.max(16, Math.min(limit, MAX_REPLAY_ROWS / reported));
        try (PreparedStatement ps = readConnection.prepareStatement("SELECT * FROM (SELECT rank, step, loss, grad_norm, lr, "
                + "loss_scale, action, clip, time_ms, ROW_NUMBER() OVER (PARTITION BY rank ORDER BY rowid DESC) AS rn "
                + "FROM steps WHERE run_id=?) WHERE rn <= ? ORDER BY rank, rn DESC")) {
            ps.setString(1, runId);
            ps.setInt(2, perRank);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    int rank = rs.getInt("rank");
                    out.computeIfAbsent(rank, r -> new ArrayList<>()).add(new StepRecord(runId, rank, rs.getLong("step"),
                            getDouble(rs, "loss"), getDouble(rs, "grad_norm"), getDouble(rs, "lr"), getDouble(rs, "loss_scale"),
                            Action.valueOf(rs.getString("action")), getDouble(rs, "clip"),
                            Instant.ofEpochMilli(rs.getLong("time_ms"))));
                }
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read steps from the journal: " + e.getMessage(), e);
        }
        return out;
    }

    /**
     * Journal retention: deletes runs CLOSED before {@code closedBefore} with their steps and
     * incidents, so the journal and the start time stay bounded over months of runs. Runs not
     * closed are kept whatever their age (a paused run is not garbage). Returns the runs removed.
     */
    public int expireClosedRuns(Instant closedBefore) {
        List<String> expired = new ArrayList<>();
        synchronized (this) {
            try (PreparedStatement ps = readConnection.prepareStatement(
                    "SELECT run_id FROM runs WHERE state='CLOSED' AND updated_ms < ?")) {
                ps.setLong(1, closedBefore.toEpochMilli());
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        expired.add(rs.getString(1));
                    }
                }
            } catch (SQLException e) {
                throw new IllegalStateException("cannot read runs from the journal: " + e.getMessage(), e);
            }
        }
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

    @Override
    public synchronized List<Incident> incidents(String runId, int limit) {
        List<Incident> out = new ArrayList<>();
        try (PreparedStatement ps = readConnection.prepareStatement(
                "SELECT * FROM incidents WHERE run_id=? ORDER BY id DESC LIMIT ?")) {
            ps.setString(1, runId);
            ps.setInt(2, limit);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    out.add(new Incident(rs.getLong("id"), runId, rs.getInt("rank"), rs.getLong("step"),
                            IncidentKind.valueOf(rs.getString("kind")), Severity.valueOf(rs.getString("severity")),
                            rs.getString("message"), rs.getString("module"), Instant.ofEpochMilli(rs.getLong("time_ms"))));
                }
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read incidents from the journal: " + e.getMessage(), e);
        }
        return out;
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
            if (writeConnection != null) {
                writeConnection.close();
            }
            readConnection.close();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (SQLException e) {
            LOG.warn("closing the journal: " + e.getMessage());
        }
    }
}
