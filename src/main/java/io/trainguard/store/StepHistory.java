package io.trainguard.store;

import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

/**
 * Read side of the journal for people: a run's step history, downsampled in SQLite, and its
 * incidents on the same step axis. It opens its own read-only connection so a slow page never
 * waits behind (or holds up) the journal's writer and its recovery.
 *
 * <p>Downsampling keeps extremes: each bucket reports min and max of loss and grad norm, so a
 * spike of one step in a million still shows on a 1000-point chart. A bucket also counts the
 * verdicts in it, so a single SKIP is never averaged away.
 */
public final class StepHistory implements AutoCloseable {

    /** One bucket of consecutive steps (one step when the range is small). Non-finite values read as null. */
    public record Bucket(long firstStep, long lastStep, int reports,
                         Double lossMin, Double lossMax, Double lossMean,
                         Double gradNormMin, Double gradNormMax,
                         Double clipThreshold, Double learningRate, Double lossScaleMin,
                         int nonFiniteLoss, int skips, int clips, int rollbacks, int halts) {
    }

    /** A downsampled range: at most the requested number of buckets, {@code bucketWidth} steps each. */
    public record Range(String runId, int rank, long fromStep, long toStep, long bucketWidth, long reports,
                        List<Bucket> buckets) {
    }

    /** An incident as the history axis needs it (the full record is in the run view). */
    public record Event(long id, int rank, long step, String kind, String severity, String message, String module,
                        long timeMs) {
    }

    private final Connection connection;

    public StepHistory(Path journalFile) {
        try {
            Properties p = new Properties();
            p.setProperty("open_mode", "1"); // SQLITE_OPEN_READONLY
            connection = DriverManager.getConnection("jdbc:sqlite:" + journalFile.toAbsolutePath(), p);
            try (Statement s = connection.createStatement()) {
                s.execute("PRAGMA busy_timeout=5000");
                s.execute("PRAGMA query_only=true");
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot open the journal " + journalFile.toAbsolutePath()
                    + " for reading: " + e.getMessage(), e);
        }
    }

    /** The step range a rank has reported, or null when it has reported nothing. */
    public synchronized long[] stepBounds(String runId, int rank) {
        // two statements: SQLite answers a lone MIN or MAX from the index, both together by a scan
        Long min = oneStep("SELECT MIN(step) FROM steps WHERE run_id=? AND rank=?", runId, rank);
        return min == null ? null : new long[] {min, oneStep("SELECT MAX(step) FROM steps WHERE run_id=? AND rank=?", runId, rank)};
    }

    private Long oneStep(String sql, String runId, int rank) {
        try (PreparedStatement ps = connection.prepareStatement(sql)) {
            ps.setString(1, runId);
            ps.setInt(2, rank);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                long v = rs.getLong(1);
                return rs.wasNull() ? null : v;
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read the step range from the journal: " + e.getMessage(), e);
        }
    }

    /**
     * Steps {@code from..to} (inclusive; null = the rank's first/last step) of one rank in at most
     * {@code points} buckets of equal width.
     */
    public synchronized Range steps(String runId, int rank, Long from, Long to, int points) {
        if (points < 1) {
            throw new IllegalArgumentException("points must be at least 1, got " + points);
        }
        long[] bounds = stepBounds(runId, rank);
        if (bounds == null) {
            return new Range(runId, rank, from == null ? 0 : from, to == null ? -1 : to, 1, 0, List.of());
        }
        long lo = from == null ? bounds[0] : Math.max(from, bounds[0]);
        long hi = to == null ? bounds[1] : Math.min(to, bounds[1]);
        if (hi < lo) {
            return new Range(runId, rank, lo, hi, 1, 0, List.of());
        }
        long span = hi - lo + 1;
        long width = Math.max(1, (span + points - 1) / points); // ceil: never more than points buckets
        if (width >= Rollup.BASE) {
            return rollup(runId, rank).range(lo, hi, points);
        }
        // One pass in SQLite; MIN/MAX/AVG skip NULL, which is how NaN is stored. An absent loss (a step
        // reported without one) is NULL too: NULL counts as non-finite only where the update was held
        // back, as a NaN loss always is (Rollup.add).
        String sql = "SELECT (step - ?1) / ?2 AS b, MIN(step), MAX(step), COUNT(*), "
                + "MIN(loss), MAX(loss), AVG(loss), MIN(grad_norm), MAX(grad_norm), MAX(clip), MAX(lr), MIN(loss_scale), "
                + "SUM((loss IS NULL AND action NOT IN ('APPLY','CLIP')) OR abs(loss) > 1.7976931348623157e308), SUM(action='SKIP'), SUM(action='CLIP'), SUM(action='ROLLBACK'), SUM(action='HALT') "
                + "FROM steps WHERE run_id=?3 AND rank=?4 AND step BETWEEN ?5 AND ?6 GROUP BY b ORDER BY b";
        List<Bucket> out = new ArrayList<>();
        long reports = 0;
        try (PreparedStatement ps = connection.prepareStatement(sql)) {
            ps.setLong(1, lo);
            ps.setLong(2, width);
            ps.setString(3, runId);
            ps.setInt(4, rank);
            ps.setLong(5, lo);
            ps.setLong(6, hi);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    int n = rs.getInt(4);
                    reports += n;
                    out.add(new Bucket(rs.getLong(2), rs.getLong(3), n, finite(rs, 5), finite(rs, 6), finite(rs, 7),
                            finite(rs, 8), finite(rs, 9), finite(rs, 10), finite(rs, 11), finite(rs, 12),
                            rs.getInt(13), rs.getInt(14), rs.getInt(15), rs.getInt(16), rs.getInt(17)));
                }
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read steps from the journal: " + e.getMessage(), e);
        }
        return new Range(runId, rank, lo, hi, width, reports, out);
    }

    private final java.util.Map<String, Rollup> rollups = new java.util.LinkedHashMap<>(16, 0.75f, true) {
        @Override
        protected boolean removeEldestEntry(java.util.Map.Entry<String, Rollup> eldest) {
            return size() > MAX_ROLLUPS;
        }
    };
    static final int MAX_ROLLUPS = 32;

    /**
     * Brings the series' rollup up to date with the rows written since the last read and returns
     * how many it took in. Called in the background (config/HistoryWarmer) so the first look at a
     * long run does not have to read all its rows while a person waits.
     */
    public synchronized long refresh(String runId, int rank) {
        Rollup r = rollups.get(runId + "\u0000" + rank);
        long before = r == null ? 0 : r.rows();
        return rollup(runId, rank).rows() - before;
    }

    /** The series' rollup, brought up to date with the rows written since the last call. */
    private Rollup rollup(String runId, int rank) {
        Rollup r = rollups.computeIfAbsent(runId + "\u0000" + rank, k -> new Rollup(runId, rank));
        try (PreparedStatement ps = connection.prepareStatement("SELECT rowid, step, loss, grad_norm, clip, lr, loss_scale, "
                + "action FROM steps WHERE run_id=? AND rank=? AND rowid > ? ORDER BY rowid")) {
            ps.setString(1, runId);
            ps.setInt(2, rank);
            ps.setLong(3, r.lastRowid);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    r.add(rs.getLong(1), rs.getLong(2), orNaN(rs, 3), orNaN(rs, 4), orNaN(rs, 5), orNaN(rs, 6),
                            orNaN(rs, 7), rs.getString(8));
                }
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read steps from the journal: " + e.getMessage(), e);
        }
        return r;
    }

    /** Incidents of a run (all ranks) with steps in {@code from..to}, oldest first, at most {@code limit}. */
    public synchronized List<Event> incidents(String runId, Long from, Long to, int limit) {
        List<Event> out = new ArrayList<>();
        try (PreparedStatement ps = connection.prepareStatement("SELECT id, rank, step, kind, severity, message, module, "
                + "time_ms FROM incidents WHERE run_id=? AND step BETWEEN ? AND ? ORDER BY id LIMIT ?")) {
            ps.setString(1, runId);
            ps.setLong(2, from == null ? Long.MIN_VALUE : from);
            ps.setLong(3, to == null ? Long.MAX_VALUE : to);
            ps.setInt(4, limit);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    out.add(new Event(rs.getLong(1), rs.getInt(2), rs.getLong(3), rs.getString(4), rs.getString(5),
                            rs.getString(6), rs.getString(7), rs.getLong(8)));
                }
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read incidents from the journal: " + e.getMessage(), e);
        }
        return out;
    }

    /** The steps (any rank) strictly before {@code step}, newest last: the trend a root-cause report reads. */
    public synchronized List<double[]> stepsBefore(String runId, int rank, long step, int limit) {
        List<double[]> out = new ArrayList<>();
        try (PreparedStatement ps = connection.prepareStatement("SELECT step, loss, grad_norm, lr, loss_scale FROM steps "
                + "WHERE run_id=? AND rank=? AND step < ? ORDER BY rowid DESC LIMIT ?")) {
            ps.setString(1, runId);
            ps.setInt(2, rank);
            ps.setLong(3, step);
            ps.setInt(4, limit);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    out.add(0, new double[] {rs.getLong(1), orNaN(rs, 2), orNaN(rs, 3), orNaN(rs, 4), orNaN(rs, 5)});
                }
            }
        } catch (SQLException e) {
            throw new IllegalStateException("cannot read steps from the journal: " + e.getMessage(), e);
        }
        return out;
    }

    private static double orNaN(ResultSet rs, int column) throws SQLException {
        double v = rs.getDouble(column);
        return rs.wasNull() ? Double.NaN : v;
    }

    /** JSON has no NaN or Infinity: a non-finite aggregate reads as null (and nonFiniteLoss counts it). */
    private static Double finite(ResultSet rs, int column) throws SQLException {
        double v = rs.getDouble(column);
        return rs.wasNull() || !Double.isFinite(v) ? null : v;
    }

    @Override
    public synchronized void close() {
        try {
            connection.close();
        } catch (SQLException ignored) {
            // read-only: nothing to lose
        }
    }
}
