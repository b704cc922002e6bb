package io.trainguard.checkpoint;

import java.util.List;

/** Durable storage of checkpoint records (the journal). Calls come from one registry, serialised. */
public interface CheckpointStore {
    /** Stores a new record; its id is not yet stored. */
    void insert(CheckpointRecord r);

    /** Replaces the stored record of the same id. */
    void update(CheckpointRecord r);

    /** Every stored record, any order; called once at startup. */
    List<CheckpointRecord> loadAll();
}
