package io.trainguard.store;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.SQLException;
import java.sql.Statement;
import org.jboss.logging.Logger;

/**
 * The journal's write connection and its prepared statements, owned by {@link SqliteJournal}'s
 * writer thread (not thread-safe: only that thread calls in after construction). Kept apart from
 * the commit loop because after a failed commit the connection is replaced, not reused (see
 * {@link #recover}), and that life cycle is easier to follow in one place.
 */
final class JournalWriteConnection implements AutoCloseable {
    /** SqliteJournal's category, so that log configuration written for the journal still applies. */
    private static final Logger LOG = Logger.getLogger(SqliteJournal.class);

    private final String url;
    private final String synchronous;
    /** Reopened after a failed commit; null while the disk does not let it open. */
    private Connection connection;
    /** Prepared once per connection (closing the connection closes them). */
    private PreparedStatement insertStep;
    private PreparedStatement insertIncident;
    private PreparedStatement upsertRun;

    /** Opens the first connection and creates the schema, so that a journal that cannot be written fails at start. */
    JournalWriteConnection(String url, String synchronous) throws SQLException {
        this.url = url;
        this.synchronous = synchronous;
        connection = open(true);
    }

    private Connection open(boolean createSchema) throws SQLException {
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

    /** The open connection, reopened first if a failure left none; statements prepared. */
    Connection prepared() throws SQLException {
        if (connection == null) {
            connection = open(false);
        }
        if (insertStep == null) {
            insertStep = connection.prepareStatement("INSERT INTO steps(run_id, rank, step, loss, grad_norm, "
                    + "lr, loss_scale, action, clip, time_ms) VALUES (?,?,?,?,?,?,?,?,?,?)");
            insertIncident = connection.prepareStatement("INSERT INTO incidents(id, run_id, rank, step, kind, "
                    + "severity, message, module, time_ms) VALUES (?,?,?,?,?,?,?,?,?)");
            upsertRun = connection.prepareStatement("INSERT INTO runs(run_id, state, snapshot, updated_ms) "
                    + "VALUES (?,?,?,?) ON CONFLICT(run_id) DO UPDATE SET state=excluded.state, "
                    + "snapshot=excluded.snapshot, updated_ms=excluded.updated_ms");
        }
        return connection;
    }

    /** Valid after {@link #prepared} until the next {@link #recover}. */
    PreparedStatement insertStep() {
        return insertStep;
    }

    PreparedStatement insertIncident() {
        return insertIncident;
    }

    PreparedStatement upsertRun() {
        return upsertRun;
    }

    /**
     * After a failed commit SQLite may already have rolled the transaction back on its own (a full
     * disk does that), and the driver's connection then answers every later commit with "cannot
     * commit - no transaction is active" until the process restarts. A fresh connection has no such
     * state: close the old one and open another (or leave it null and retry on the next write).
     */
    void recover() {
        insertStep = null;
        insertIncident = null;
        upsertRun = null;
        if (connection != null) {
            try {
                connection.rollback();
            } catch (SQLException ignored) {
                // already rolled back by SQLite, or the connection is broken: it is replaced below
            }
            try {
                connection.close();
            } catch (SQLException ignored) {
                // closing a broken connection; nothing else to do with it
            }
            connection = null;
        }
        try {
            connection = open(false);
        } catch (SQLException e) {
            LOG.debugf("journal connection not reopened yet: %s", e.getMessage());
        }
    }

    /** One tiny committed write: succeeds once the disk has room and is writable again. */
    void probe() throws SQLException {
        if (connection == null) {
            connection = open(false);
        }
        try (PreparedStatement ps = connection.prepareStatement(
                "INSERT OR REPLACE INTO journal_probe(id, time_ms) VALUES (1, ?)")) {
            ps.setLong(1, System.currentTimeMillis());
            ps.executeUpdate();
        }
        connection.commit();
    }

    @Override
    public void close() throws SQLException {
        if (connection != null) {
            connection.close();
        }
    }
}
