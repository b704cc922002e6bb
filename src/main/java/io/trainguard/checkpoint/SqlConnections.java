package io.trainguard.checkpoint;

import java.sql.Connection;
import java.sql.SQLException;

/**
 * Lends a JDBC connection for one unit of work; the owner decides its life cycle (a pooled
 * DataSource, or the journal's single SQLite connection behind a lock).
 */
@FunctionalInterface
public interface SqlConnections {
    <T> T withConnection(SqlWork<T> work) throws SQLException;

    @FunctionalInterface
    interface SqlWork<T> {
        T run(Connection c) throws SQLException;
    }

    /** One connection per unit of work, closed after it. */
    static SqlConnections fromDataSource(javax.sql.DataSource ds) {
        return new SqlConnections() {
            @Override
            public <T> T withConnection(SqlWork<T> work) throws SQLException {
                try (Connection c = ds.getConnection()) {
                    return work.run(c);
                }
            }
        };
    }
}
