package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.TensorEntry;
import java.util.ArrayList;
import java.util.List;

/**
 * How {@link TensorScanner} divides a file's tensor data among its threads: pieces of at most
 * {@code chunkBytes} of one tensor, grouped into units of at most {@code chunkBytes} of file that
 * one thread maps or reads. Apart from the scan so that the layout rules (pieces never span two
 * tensors; units may skip bytes between entries) are in one place.
 */
final class ScanPlan {
    private ScanPlan() {
    }

    /** A contiguous piece of one tensor; pieces never span two tensors. */
    record Piece(int tensor, int index, long filePos, int length) {
    }

    /** A file range read or mapped by one thread, covering consecutive pieces. */
    record Unit(long filePos, int length, List<Piece> pieces) {
    }

    static List<Unit> units(List<TensorEntry> entries, long dataStart, int chunkBytes) {
        List<Unit> units = new ArrayList<>();
        List<Piece> current = new ArrayList<>();
        long unitStart = -1;
        long unitLen = 0;
        for (int t = 0; t < entries.size(); t++) {
            TensorEntry e = entries.get(t);
            long pos = dataStart + e.begin();
            long remaining = e.byteLength();
            int index = 0;
            while (remaining > 0) {
                int len = (int) Math.min(remaining, chunkBytes);
                // A unit spans from its first piece to its last: entries of a safetensors file are
                // adjacent, those of a zip (torch.save) have record headers between them, unread.
                if (unitLen > 0 && pos + len - unitStart > chunkBytes) {
                    units.add(new Unit(unitStart, (int) unitLen, List.copyOf(current)));
                    current.clear();
                    unitLen = 0;
                }
                if (unitLen == 0) {
                    unitStart = pos;
                }
                current.add(new Piece(t, index++, pos, len));
                unitLen = pos + len - unitStart;
                pos += len;
                remaining -= len;
            }
        }
        if (unitLen > 0) {
            units.add(new Unit(unitStart, (int) unitLen, List.copyOf(current)));
        }
        return units;
    }

    /** Per tensor, how many pieces the units hold (at least one slot each, for empty tensors). */
    static ScanAccumulator[][] slots(List<Unit> units, int tensors) {
        int[] pieceCounts = new int[tensors];
        for (Unit u : units) {
            for (Piece p : u.pieces()) {
                pieceCounts[p.tensor()] = Math.max(pieceCounts[p.tensor()], p.index() + 1);
            }
        }
        ScanAccumulator[][] slots = new ScanAccumulator[tensors][];
        for (int i = 0; i < slots.length; i++) {
            slots[i] = new ScanAccumulator[Math.max(1, pieceCounts[i])];
        }
        return slots;
    }
}
