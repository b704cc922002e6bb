package io.trainguard.checkpoint;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

/**
 * Why a registered checkpoint no longer describes a state the trainer can return to, or null when it
 * still does. The registry evicts a checkpoint for the first reason found, so it is never chosen as a
 * rollback target.
 */
final class EvictionReasons {
    private EvictionReasons() {
    }

    /**
     * The trainer holds a slot's snapshot only until it writes the slot again, and its snapshots only
     * while its process lives: registering {@code slot} evicts the slot's previous snapshot and those
     * of another trainer process of the run.
     */
    static String slotRegistered(CheckpointRecord r, String slot, long step) {
        if (r.format() != CheckpointFormat.MEMORY) {
            return null;
        }
        String held = r.files().get(0).path();
        if (held.equals(slot)) {
            return "slot overwritten by the snapshot of step " + step;
        }
        return MemorySnapshots.sameProcess(held, slot) ? null
                : "held by a trainer process that is gone (a newer one registered " + slot + ")";
    }

    /** Rank {@code rank} re-opened the run from trainer process {@code instance}: other processes' snapshots are gone. */
    static String rankReopened(CheckpointRecord r, int rank, String instance) {
        return r.format() == CheckpointFormat.MEMORY
                && MemorySnapshots.otherProcessOfRank(r.files().get(0).path(), rank, instance)
                ? "held by a trainer process that is gone (rank " + rank + " re-opened the run as " + instance + ")"
                : null;
    }

    /**
     * A checkpoint written again to a path an earlier one of the run named (nanoGPT's one
     * {@code ckpt.pt}, a fixed filename): the earlier record no longer describes what is on disk, and a
     * rollback to it would load the newer state under the older step.
     */
    static String rewritten(CheckpointRecord r, List<String> written, long step) {
        return r.format() == CheckpointFormat.MEMORY ? null
                : r.files().stream().map(CheckpointFileSpec::path).filter(written::contains).findFirst()
                        .map(path -> path + " was written again by the checkpoint of step " + step
                                + ": it no longer holds this state").orElse(null);
    }

    /**
     * Checkpoint rotation (Lightning's {@code save_top_k}, the HF Trainer's {@code save_total_limit}, a
     * loop keeping its last k files) deletes files a run registered. Before, the newest known-good was
     * often a deleted file and the trainer, ordered back to it, halted although an intact target was held.
     */
    static String deleted(CheckpointRecord r) {
        if (r.format() == CheckpointFormat.MEMORY) {
            return null; // nothing on disk
        }
        for (CheckpointFileSpec f : r.files()) {
            if (!Files.exists(Path.of(f.path()))) {
                return f.path() + " is gone from disk (deleted after it was saved, as checkpoint rotation does: "
                        + "save_top_k, save_total_limit); not a rollback target";
            }
        }
        return null;
    }
}
