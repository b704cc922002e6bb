package io.trainguard.store;

import java.sql.SQLException;
import java.sql.Statement;

/** The journal's tables. Additive changes only: a newer sidecar must open an older journal. */
final class Schema {
    private Schema() {
    }

    static void create(Statement s) throws SQLException {
        s.execute("CREATE TABLE IF NOT EXISTS runs(run_id TEXT PRIMARY KEY, state TEXT NOT NULL, snapshot TEXT NOT NULL, updated_ms INTEGER NOT NULL)");
        s.execute("CREATE TABLE IF NOT EXISTS steps(run_id TEXT NOT NULL, rank INTEGER NOT NULL, step INTEGER NOT NULL, "
                + "loss REAL, grad_norm REAL, lr REAL, loss_scale REAL, action TEXT NOT NULL, clip REAL, time_ms INTEGER NOT NULL)");
        s.execute("CREATE INDEX IF NOT EXISTS steps_by_rank ON steps(run_id, rank)");
        // the history API's range queries (StepHistory): without it a 10-step zoom scans the whole run
        s.execute("CREATE INDEX IF NOT EXISTS steps_by_step ON steps(run_id, rank, step)");
        s.execute("CREATE TABLE IF NOT EXISTS incidents(id INTEGER PRIMARY KEY, run_id TEXT NOT NULL, rank INTEGER NOT NULL, "
                + "step INTEGER NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL, module TEXT, time_ms INTEGER NOT NULL)");
        s.execute("CREATE INDEX IF NOT EXISTS incidents_by_run ON incidents(run_id, id)");
        // the writer's recovery probe after a failed commit (disk full, read-only remount)
        s.execute("CREATE TABLE IF NOT EXISTS journal_probe(id INTEGER PRIMARY KEY, time_ms INTEGER NOT NULL)");
    }
}
