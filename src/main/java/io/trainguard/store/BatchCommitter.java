package io.trainguard.store;

import com.fasterxml.jackson.databind.ObjectMapper;
import io.trainguard.guard.JournalRow;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.StepRecord;
import java.io.IOException;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.SQLException;
import java.sql.Types;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Writes one group commit: every queued {@link JournalWrite} of a batch in one transaction. Called
 * by {@link SqliteJournal}'s writer thread only; apart from the loop so that the loop reads as
 * queueing and failure handling, and the row binding as the table layout.
 */
final class BatchCommitter {
    private final JournalWriteConnection connection;
    private final ObjectMapper json;

    BatchCommitter(JournalWriteConnection connection, ObjectMapper json) {
        this.connection = connection;
        this.json = json;
    }

    void commit(List<SqliteJournal.Pending> batch) throws SQLException, IOException {
        Map<String, RunSnapshot> runs = new LinkedHashMap<>();
        Connection c = connection.prepared();
        PreparedStatement step = connection.insertStep();
        PreparedStatement incident = connection.insertIncident();
        PreparedStatement upsertRun = connection.upsertRun();
        try {
            for (SqliteJournal.Pending p : batch) {
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
            for (SqliteJournal.Pending p : batch) {
                for (JournalRow row : p.write().rows()) {
                    row.write(c); // other tables (checkpoints): same transaction as their step
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
        c.commit();
    }

    /** SQLite stores NaN as NULL; NULL reads back as NaN ({@link JournalReads}). */
    private static void setDouble(PreparedStatement ps, int index, double v) throws SQLException {
        if (Double.isNaN(v)) {
            ps.setNull(index, Types.REAL);
        } else {
            ps.setDouble(index, v);
        }
    }
}
