package io.trainguard.store;

import com.fasterxml.jackson.databind.ObjectMapper;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.model.StepRecord;
import java.io.IOException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;

/**
 * The journal's queries (replay at start, run pages, retention's selection), on one read
 * connection of their own: in WAL mode they run beside the writer thread and never wait for a
 * commit. The connection is not thread-safe, so every query holds this object's monitor.
 */
final class JournalReads implements AutoCloseable {
    /** Rows replayed per run at most: a huge world that really reported gets fewer steps per rank. */
    static final int MAX_REPLAY_ROWS = 1_000_000;

    private final Connection connection;
    private final ObjectMapper json;

    JournalReads(String url, ObjectMapper json) throws SQLException {
        this.json = json;
        connection = DriverManager.getConnection(url);
        try (Statement s = connection.createStatement()) {
            s.execute("PRAGMA busy_timeout=5000");
        }
    }

    /** The highest incident id written so far (0 for none), where new ids continue. */
    synchronized long maxIncidentId() throws SQLException {
        try (Statement s = connection.createStatement();
             ResultSet rs = s.executeQuery("SELECT COALESCE(MAX(id), 0) FROM incidents")) {
            rs.next();
            return rs.getLong(1);
        }
    }

    private static double getDouble(ResultSet rs, String column) throws SQLException {
        double v = rs.getDouble(column);
        return rs.wasNull() ? Double.NaN : v;
    }

    synchronized List<RunSnapshot> loadRuns() {
        List<RunSnapshot> out = new ArrayList<>();
        try (Statement s = connection.createStatement();
             ResultSet rs = s.executeQuery("SELECT snapshot FROM runs ORDER BY rowid")) {
            while (rs.next()) {
                out.add(json.readValue(rs.getString(1), RunSnapshot.class));
            }
        } catch (SQLException | IOException e) {
            throw new IllegalStateException("cannot read runs from the journal: " + e.getMessage(), e);
        }
        return out;
    }

    synchronized List<StepRecord> recentSteps(String runId, int rank, int limit) {
        List<StepRecord> out = new ArrayList<>();
        try (PreparedStatement ps = connection.prepareStatement(
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

    synchronized Map<Integer, List<StepRecord>> recentStepsByRank(String runId, int worldSize, int limit) {
        Map<Integer, List<StepRecord>> out = new TreeMap<>();
        int reported;
        try (PreparedStatement count = connection.prepareStatement("SELECT COUNT(DISTINCT rank) FROM steps WHERE run_id=?")) {
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
        try (PreparedStatement ps = connection.prepareStatement("SELECT * FROM (SELECT rank, step, loss, grad_norm, lr, "
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

    /** Runs CLOSED and last changed before {@code closedBefore}: what retention deletes. */
    synchronized List<String> closedRunsBefore(Instant closedBefore) {
        List<String> expired = new ArrayList<>();
        try (PreparedStatement ps = connection.prepareStatement(
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
        return expired;
    }

    synchronized List<Incident> incidents(String runId, int limit) {
        List<Incident> out = new ArrayList<>();
        try (PreparedStatement ps = connection.prepareStatement(
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

    /** Journal.incidentStepsByRank in one query that reads ranks and steps only. */
    synchronized Map<Integer, Set<Long>> incidentStepsByRank(String runId, Set<IncidentKind> kinds, long fromStep) {
        Map<Integer, Set<Long>> out = new TreeMap<>();
        if (kinds.isEmpty()) {
            return out;
        }
        String in = String.join(",", Collections.nCopies(kinds.size(), "?"));
        try (PreparedStatement ps = connection.prepareStatement("SELECT rank, step FROM incidents WHERE run_id=? AND kind IN ("
                + in + ") AND step >= ?")) {
            int i = 1;
            ps.setString(i++, runId);
            for (IncidentKind k : kinds) {
                ps.setString(i++, k.name());
            }
            ps.setLong(i, fromStep);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    out.computeIfAbsent(rs.getInt(1), r -> new HashSet<>()).add(rs.getLong(2));
                }
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read incidents from the journal: " + e.getMessage(), e);
        }
        return out;
    }

    @Override
    public void close() throws SQLException {
        connection.close();
    }
}
