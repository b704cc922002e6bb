package io.trainguard.checkpoint;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/** For tests and for running without a journal. */
public final class InMemoryCheckpointStore implements CheckpointStore {
    private final Map<String, CheckpointRecord> records = new LinkedHashMap<>();

    @Override
    public synchronized void insert(CheckpointRecord r) {
        if (records.putIfAbsent(r.id(), r) != null) {
            throw new IllegalStateException("checkpoint " + r.id() + " already stored");
        }
    }

    @Override
    public synchronized void update(CheckpointRecord r) {
        if (records.replace(r.id(), r) == null) {
            throw new IllegalStateException("checkpoint " + r.id() + " not stored");
        }
    }

    @Override
    public synchronized List<CheckpointRecord> loadAll() {
        return new ArrayList<>(records.values());
    }
}
