package io.trainguard.checkpoint;

import java.util.List;

/**
 * Names of in-memory snapshots: {@code memory://<trainer process>/<slot>}. The sidecar never reads
 * them; the name says which trainer process holds the snapshot and in which slot.
 */
final class MemorySnapshots {
    static final String SCHEME = "memory://";

    private MemorySnapshots() {
    }

    static void checkSlot(List<CheckpointFileSpec> files) {
        String p = files.get(0).path();
        if (files.size() != 1 || !p.startsWith(SCHEME) || p.indexOf('/', SCHEME.length()) < 0) {
            throw new IllegalArgumentException("a MEMORY checkpoint names exactly one slot as "
                    + "memory://<trainer process>/<slot>, got " + files.stream().map(CheckpointFileSpec::path).toList());
        }
    }

    static boolean sameProcess(String a, String b) {
        return process(a).equals(process(b));
    }

    /** Whether {@code slot} is rank {@code rank}'s snapshot held by a process other than {@code instance}. */
    static boolean otherProcessOfRank(String slot, int rank, String instance) {
        String holder = process(slot);
        return holder.endsWith("/rank" + rank) && !holder.equals(SCHEME + instance + "/rank" + rank);
    }

    private static String process(String slot) {
        return slot.substring(0, slot.lastIndexOf('/'));
    }
}
