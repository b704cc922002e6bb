package io.trainguard.checkpoint;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.type.TypeReference;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.trainguard.tensor.scan.TensorStats;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * {@link CheckpointStore} on one SQL table (written for SQLite, plain SQL otherwise). Files,
 * checksums and per-tensor statistics are JSON columns: they are read back whole, never queried.
 */
public final class JdbcCheckpointStore implements CheckpointStore {
    public static final String DDL = """
            CREATE TABLE IF NOT EXISTS checkpoint (
              checkpoint_id        TEXT PRIMARY KEY,
              run_id               TEXT NOT NULL,
              step                 INTEGER NOT NULL,
              format               TEXT NOT NULL,
              files_json           TEXT NOT NULL,
              data_position        INTEGER NOT NULL,
              state                TEXT NOT NULL,
              state_reason         TEXT NOT NULL,
              registered_ms        INTEGER NOT NULL,
              updated_ms           INTEGER NOT NULL,
              healthy_steps        INTEGER NOT NULL,
              last_counted_step    INTEGER NOT NULL,
              first_unhealthy_step INTEGER NOT NULL,
              checksums_json       TEXT NOT NULL,
              tensors_json         TEXT NOT NULL,
              verified_bytes       INTEGER NOT NULL,
              verify_bytes_per_s   REAL NOT NULL
            )""";
    public static final String INDEX = "CREATE INDEX IF NOT EXISTS checkpoint_run_step ON checkpoint(run_id, step)";

    private static final String COLUMNS = "checkpoint_id, run_id, step, format, files_json, data_position, state, "
            + "state_reason, registered_ms, updated_ms, healthy_steps, last_counted_step, first_unhealthy_step, "
            + "checksums_json, tensors_json, verified_bytes, verify_bytes_per_s";

    /** Rows written by an older version (e.g. a "crc32c" field per tensor) still read; the field is dropped. */
    private static final ObjectMapper JSON = new ObjectMapper()
            .configure(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES, false);

    private final SqlConnections db;

    /** Creates the table if missing. */
    public JdbcCheckpointStore(SqlConnections db) {
        this.db = db;
        sql(() -> db.withConnection(c -> {
            try (Statement s = c.createStatement()) {
                s.execute(DDL);
                s.execute(INDEX);
            }
            return null;
        }));
    }

    @Override
    public void insert(CheckpointRecord r) {
        sql(() -> db.withConnection(c -> {
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO checkpoint (" + COLUMNS
                    + ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")) {
                bind(ps, r);
                ps.executeUpdate();
            }
            return null;
        }));
    }

    @Override
    public void update(CheckpointRecord r) {
        sql(() -> db.withConnection(c -> {
            try (PreparedStatement ps = c.prepareStatement("UPDATE checkpoint SET checkpoint_id=?, run_id=?, step=?, "
                    + "format=?, files_json=?, data_position=?, state=?, state_reason=?, registered_ms=?, "
                    + "updated_ms=?, healthy_steps=?, last_counted_step=?, first_unhealthy_step=?, "
                    + "checksums_json=?, tensors_json=?, verified_bytes=?, verify_bytes_per_s=? "
                    + "WHERE checkpoint_id=?")) {
                bind(ps, r);
                ps.setString(18, r.id());
                if (ps.executeUpdate() != 1) {
                    throw new SQLException("checkpoint " + r.id() + " not stored");
                }
            }
            return null;
        }));
    }

    /** Creates the table and index if missing, on a connection the caller owns (the journal's writer). */
    public static void createTables(Connection c) throws SQLException {
        try (Statement s = c.createStatement()) {
            s.execute(DDL);
            s.execute(INDEX);
        }
    }

    /** Inserts or replaces one record, on a connection the caller owns (the journal's writer). */
    public static void upsert(Connection c, CheckpointRecord r) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO checkpoint (" + COLUMNS
                + ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(checkpoint_id) DO UPDATE SET "
                + "run_id=excluded.run_id, step=excluded.step, format=excluded.format, files_json=excluded.files_json, "
                + "data_position=excluded.data_position, state=excluded.state, state_reason=excluded.state_reason, "
                + "registered_ms=excluded.registered_ms, updated_ms=excluded.updated_ms, "
                + "healthy_steps=excluded.healthy_steps, last_counted_step=excluded.last_counted_step, "
                + "first_unhealthy_step=excluded.first_unhealthy_step, checksums_json=excluded.checksums_json, "
                + "tensors_json=excluded.tensors_json, verified_bytes=excluded.verified_bytes, "
                + "verify_bytes_per_s=excluded.verify_bytes_per_s")) {
            bind(ps, r);
            ps.executeUpdate();
        }
    }

    @Override
    public List<CheckpointRecord> loadAll() {
        return sql(() -> db.withConnection(c -> {
            List<CheckpointRecord> out = new ArrayList<>();
            try (Statement s = c.createStatement();
                    ResultSet rs = s.executeQuery("SELECT " + COLUMNS + " FROM checkpoint ORDER BY run_id, step")) {
                while (rs.next()) {
                    out.add(read(rs));
                }
            }
            return out;
        }));
    }

    private static void bind(PreparedStatement ps, CheckpointRecord r) throws SQLException {
        ps.setString(1, r.id());
        ps.setString(2, r.runId());
        ps.setLong(3, r.step());
        ps.setString(4, r.format().name());
        ps.setString(5, json(r.files()));
        ps.setLong(6, r.dataPosition());
        ps.setString(7, r.state().name());
        ps.setString(8, r.stateReason());
        ps.setLong(9, r.registeredAt().toEpochMilli());
        ps.setLong(10, r.updatedAt().toEpochMilli());
        ps.setInt(11, r.healthyStepsSince());
        ps.setLong(12, r.lastCountedStep());
        ps.setLong(13, r.firstUnhealthyStep());
        ps.setString(14, json(r.fileChecksums()));
        ps.setString(15, json(r.tensors()));
        ps.setLong(16, r.verifiedBytes());
        ps.setDouble(17, r.verifyBytesPerSecond());
    }

    private static CheckpointRecord read(ResultSet rs) throws SQLException {
        try {
            return new CheckpointRecord(rs.getString(1), rs.getString(2), rs.getLong(3),
                    CheckpointFormat.valueOf(rs.getString(4)),
                    JSON.readValue(rs.getString(5), new TypeReference<List<CheckpointFileSpec>>() { }),
                    rs.getLong(6), CheckpointState.valueOf(rs.getString(7)), rs.getString(8),
                    Instant.ofEpochMilli(rs.getLong(9)), Instant.ofEpochMilli(rs.getLong(10)), rs.getInt(11),
                    rs.getLong(12), rs.getLong(13),
                    JSON.readValue(rs.getString(14), new TypeReference<Map<String, String>>() { }),
                    JSON.readValue(rs.getString(15), new TypeReference<List<TensorStats>>() { }),
                    rs.getLong(16), rs.getDouble(17));
        } catch (JsonProcessingException e) {
            throw new SQLException("corrupt JSON column in checkpoint " + rs.getString(1), e);
        }
    }

    private static String json(Object o) {
        try {
            return JSON.writeValueAsString(o);
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }

    private interface SqlCall<T> {
        T call() throws SQLException;
    }

    private static <T> T sql(SqlCall<T> call) {
        try {
            return call.call();
        } catch (SQLException e) {
            throw new IllegalStateException("checkpoint journal: " + e.getMessage(), e);
        }
    }
}
