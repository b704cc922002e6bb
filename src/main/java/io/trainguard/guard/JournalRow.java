package io.trainguard.guard;

import java.sql.Connection;
import java.sql.SQLException;

/**
 * A row of a table other than the engine's own (steps, incidents, runs) that must commit in the
 * same transaction as the step that caused it, e.g. a checkpoint promoted by that step. Written by
 * the journal's one writer thread on its own connection; the owning subsystem supplies the SQL.
 */
@FunctionalInterface
public interface JournalRow {
    void write(Connection connection) throws SQLException;
}
