package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.SegmentedFile;
import io.trainguard.tensor.format.TensorEntry;
import io.trainguard.tensor.format.torch.TorchArchive;
import io.trainguard.tensor.format.torch.TorchArchive.NamedTensor;
import io.trainguard.tensor.format.torch.TorchArchive.StorageRecord;
import io.trainguard.tensor.format.torch.TensorRef;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.TreeSet;

/**
 * Scans the storages of torch.save archives in place, every stored byte once, and gives each
 * tensor its own statistics. Each storage is cut at the ends of the tensor views into it; the
 * pieces are scanned once in parallel by {@link TensorScanner}, and a tensor's statistics are
 * its pieces merged, so tensors sharing a storage (tied weights, views) cost no second read.
 * A dense view (contiguous, transposed, permuted) gets exactly its elements; a view with gaps
 * (a strided slice) gets the span that covers it, so a NaN between its elements counts for it.
 */
public final class TorchStorageScan {
    private TorchStorageScan() {
    }

    /** A piece of one storage, elements [from, to). */
    private record Piece(StorageRecord storage, long from, long to) {
    }

    public static ScanResult scan(TensorScanner scanner, SegmentedFile file, List<TorchArchive> archives,
            ScanOptions options, ScanProgress progress) throws IOException, InterruptedException {
        long t0 = System.nanoTime();
        List<Piece> pieces = new ArrayList<>();
        ByteArrayOutputStream metadata = new ByteArrayOutputStream();
        for (TorchArchive a : archives) {
            metadata.writeBytes(a.pickle());
            for (StorageRecord s : a.storages().values()) {
                TreeSet<Long> cuts = new TreeSet<>(List.of(0L, s.ref().elements()));
                for (NamedTensor t : a.tensors()) {
                    if (t.ref().storage().key().equals(s.ref().key())) {
                        long[] span = t.ref().span();
                        cuts.add(span[0]);
                        cuts.add(span[1]);
                    }
                }
                Long prev = null;
                for (long c : cuts) {
                    if (prev != null && c > prev) {
                        pieces.add(new Piece(s, prev, c));
                    }
                    prev = c;
                }
            }
        }
        pieces.sort(Comparator.comparingLong(p -> position(p)));
        List<TensorEntry> entries = new ArrayList<>(pieces.size());
        for (Piece p : pieces) {
            int size = p.storage().ref().dtype().byteSize();
            entries.add(new TensorEntry("storage " + p.storage().ref().key() + "[" + p.from() + "," + p.to() + ")",
                    p.storage().ref().dtype(), new long[] {p.to() - p.from()}, position(p),
                    p.storage().position() + p.to() * size));
        }
        file.setSegments(entries, metadata.toByteArray());
        TensorScanner.Scanned s = scanner.scanEntries(file, options, progress);
        ScanAccumulator whole = ScanAccumulator.withChecksum(options.checksum());
        whole.merge(s.header());
        for (ScanAccumulator a : s.entries()) {
            whole.merge(a);
        }
        List<TensorStats> stats = new ArrayList<>();
        for (TorchArchive a : archives) {
            for (NamedTensor t : a.tensors()) {
                stats.add(tensorStats(t, a.storages().get(t.ref().storage().key()), pieces, s.entries(), options));
            }
        }
        return new ScanResult(List.copyOf(stats), file.fileSize(), System.nanoTime() - t0, whole.checksumValue());
    }

    private static long position(Piece p) {
        return p.storage().position() + p.from() * p.storage().ref().dtype().byteSize();
    }

    private static TensorStats tensorStats(NamedTensor t, StorageRecord storage, List<Piece> pieces,
            ScanAccumulator[] accs, ScanOptions options) {
        TensorRef r = t.ref();
        long[] span = r.span();
        ScanAccumulator acc = ScanAccumulator.withChecksum(options.checksum());
        for (int i = 0; i < pieces.size(); i++) {
            Piece p = pieces.get(i);
            if (p.storage() == storage && p.from() >= span[0] && p.to() <= span[1]) {
                acc.merge(accs[i]);
            }
        }
        return TensorStats.of(t.name(), r.storage().dtype(), r.shape(), acc);
    }
}
