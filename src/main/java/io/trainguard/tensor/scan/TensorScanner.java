package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.FileSnapshot;
import io.trainguard.tensor.format.MappedWindow;
import io.trainguard.tensor.format.ReadMode;
import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.ScanSource;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.format.TensorEntry;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorCompletionService;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Finite check, per-tensor statistics and content checksum of a safetensors file, in parallel
 * over units of at most {@code chunkBytes}. Each unit is either mapped and scanned in place
 * ({@link ReadMode#MAP}) or read in {@link #READ_BYTES} pieces into one reused direct buffer per
 * thread ({@link ReadMode#PREAD}): memory is bounded by threads x chunkBytes of mapped page cache,
 * or threads x 128 KiB of buffers, whatever the file size, and nothing of the data is copied to
 * the heap.
 *
 * <p>This class is the pool and the scan loop (submit the units, slot their results, merge them in
 * file order); {@link ScanPlan} divides the file into units, {@link UnitScan} is what a pool thread
 * does with one, and {@link ScanWarmUp} the start-up warm-up.
 */
public final class TensorScanner implements AutoCloseable {
    public static final int DEFAULT_CHUNK_BYTES = 64 << 20;

    /**
     * Bytes read at once per thread with {@link ReadMode#PREAD}. 128 KiB halves the read calls of
     * 64 KiB (interleaved runs: as fast or a few percent faster) and stays in a 512 KiB L2 with the
     * kernel's working set; 256 KiB was no better. A multiple of every element size and of the
     * checksum block.
     */
    static final int READ_BYTES = 128 << 10;

    private final ExecutorService pool;
    /** The per-unit work the pool threads run (map or read, kernels, file-changed checks). */
    private final UnitScan unitScan;
    private final int threads;
    private final int chunkBytes;
    private final ReadMode readMode;

    public TensorScanner(int threads) {
        this(threads, DEFAULT_CHUNK_BYTES, ReadMode.MAP);
    }

    /**
     * {@code readMode} MAP falls back to PREAD on a JVM that cannot unmap promptly
     * ({@link #readMode()} says which one runs).
     */
    public TensorScanner(int threads, int chunkBytes, ReadMode readMode) {
        if (threads < 1 || chunkBytes < ContentHash.BLOCK || chunkBytes % ContentHash.BLOCK != 0) {
            // pieces hashed on different threads must start on a block of the content hash
            throw new IllegalArgumentException("threads >= 1 and chunkBytes a positive multiple of "
                    + ContentHash.BLOCK);
        }
        this.threads = threads;
        this.chunkBytes = chunkBytes;
        this.readMode = readMode == ReadMode.MAP && !MappedWindow.available() ? ReadMode.PREAD : readMode;
        this.unitScan = new UnitScan(this.readMode);
        AtomicInteger n = new AtomicInteger();
        this.pool = Executors.newFixedThreadPool(threads, r -> {
            Thread t = new Thread(r, "trainguard-tensor-scan-" + n.incrementAndGet());
            t.setDaemon(true);
            return t;
        });
    }

    /** Which kernels a scan with {@code simd} wanted runs on this JVM, for the startup log. */
    public static String kernels(boolean simd) {
        if (!simd) {
            return "scalar (trainguard.tensor.simd=false)";
        }
        if (!ScanKernels.SIMD_AVAILABLE) {
            return "scalar; start the JVM with --add-modules jdk.incubator.vector (and the C2 JIT, not "
                    + "-XX:TieredStopAtLevel=1) for the vector kernels, about 3x faster verification";
        }
        return "vector, " + SimdScanKernels.bits() + "-bit (jdk.incubator.vector)";
    }

    /**
     * Gets the JIT to compile the scan path the way verifications will use it, right after start.
     * The Vector API is only fast once C2 has compiled a kernel (before, every vector is an
     * object); without a warm-up the first verification after start ran at a third of the speed
     * or less while the compiler competed with the scan threads for the cores, and a warm-up whose
     * branches differed from the real scan's (a CRC where the scan has none) was thrown away at
     * the first real scan. So: first the kernels on a small buffer with {@code options}, then a
     * small synthetic checkpoint (fp32, bf16, fp16; a temp file, deleted) verified through this
     * scanner's threads, reads and merge (enough scans for C2 to compile the scan path with that
     * profile). About two seconds of CPU once; a no-op on the scalar kernels.
     *
     * @return what was warmed up, for the log
     */
    public String warmUp(ScanOptions options) {
        return ScanWarmUp.run(this, options);
    }

    public int threads() {
        return threads;
    }

    public ReadMode readMode() {
        return readMode;
    }

    /**
     * Scans every tensor of {@code file}. Throws {@link RejectedTensorFileException} when the
     * file changes or shrinks while it is read. Without {@code options.stats()} maxAbs/l2Norm are
     * NaN in the result.
     */
    public ScanResult scan(ScanSource file, ScanOptions options, ScanProgress progress)
            throws IOException, InterruptedException {
        long t0 = System.nanoTime();
        Scanned s = scanEntries(file, options, progress);
        List<TensorEntry> entries = file.entries();
        List<TensorStats> result = new ArrayList<>(entries.size());
        // The file's checksum is its segments' merged in file order: the header, then each tensor.
        ScanAccumulator whole = ScanAccumulator.withChecksum(options.checksum());
        whole.merge(s.header());
        for (int i = 0; i < entries.size(); i++) {
            TensorEntry e = entries.get(i);
            result.add(TensorStats.of(e.name(), e.dtype(), e.shape(), s.entries()[i]));
            whole.merge(s.entries()[i]);
        }
        String fileChecksum = whole.checksumValue();
        return new ScanResult(List.copyOf(result), file.fileSize(), System.nanoTime() - t0, fileChecksum);
    }

    /** The accumulators of one scan: the metadata bytes', and each entry's (pieces merged in order). */
    record Scanned(ScanAccumulator header, ScanAccumulator[] entries) {
    }

    /** Scans every entry of {@code file} once; what {@link #scan} and the torch readers build on. */
    Scanned scanEntries(ScanSource file, ScanOptions options, ScanProgress progress)
            throws IOException, InterruptedException {
        List<TensorEntry> entries = file.entries();
        long dataStart = file.dataStart();
        List<ScanPlan.Unit> units = ScanPlan.units(entries, dataStart, chunkBytes);
        ExecutorCompletionService<List<ScanAccumulator>> ecs = new ExecutorCompletionService<>(pool);
        List<Future<List<ScanAccumulator>>> futures = new ArrayList<>();
        for (ScanPlan.Unit u : units) {
            futures.add(ecs.submit(() -> unitScan.scan(file, u, entries, options)));
        }
        // Results arrive in any order; pieces are slotted by (tensor, index) and merged in order.
        ScanAccumulator[][] slots = ScanPlan.slots(units, entries.size());
        long total = file.fileSize() - dataStart;
        long done = 0;
        try {
            for (int k = 0; k < units.size(); k++) {
                Future<List<ScanAccumulator>> f = ecs.take();
                int unitIndex = futures.indexOf(f);
                ScanPlan.Unit u = units.get(unitIndex);
                List<ScanAccumulator> accs = f.get();
                for (int j = 0; j < accs.size(); j++) {
                    ScanPlan.Piece p = u.pieces().get(j);
                    slots[p.tensor()][p.index()] = accs.get(j);
                }
                done += u.length();
                progress.onProgress(done, total);
            }
        } catch (ExecutionException e) {
            futures.forEach(f -> f.cancel(true));
            throw UnitScan.unitFailure(file, e.getCause());
        } catch (InterruptedException | RuntimeException e) {
            futures.forEach(f -> f.cancel(true));
            throw e;
        }
        FileSnapshot after = FileSnapshot.of(file.path());
        String diff = file.snapshot().differenceTo(after);
        if (!diff.isEmpty()) {
            throw UnitScan.changed(file, diff);
        }
        ScanAccumulator header = new ScanAccumulator();
        byte[] head = file.prefixAndHeader();
        ScanKernels.scan(ByteBuffer.wrap(head).order(ByteOrder.LITTLE_ENDIAN), 0, head.length, TensorDType.U8, header,
                new ScanOptions(options.checksum(), false, options.simd()));
        ScanAccumulator[] merged = new ScanAccumulator[entries.size()];
        for (int i = 0; i < entries.size(); i++) {
            ScanAccumulator acc = ScanAccumulator.withChecksum(options.checksum());
            for (ScanAccumulator piece : slots[i]) {
                if (piece != null) {
                    acc.merge(piece);
                }
            }
            merged[i] = acc;
        }
        return new Scanned(header, merged);
    }

    /** Scans an in-memory buffer of one tensor (DJL-decoded arrays, inspection blobs). */
    public static TensorStats scanBuffer(String name, TensorDType dtype, long[] shape, ByteBuffer littleEndian,
            Checksum checksum) {
        ScanAccumulator a = ScanAccumulator.withChecksum(checksum);
        ByteBuffer b = littleEndian.duplicate().order(ByteOrder.LITTLE_ENDIAN);
        ScanKernels.scan(b, b.position(), b.remaining(), dtype, a, new ScanOptions(checksum, true, true));
        return TensorStats.of(name, dtype, shape, a);
    }

    @Override
    public void close() {
        pool.shutdownNow();
    }
}
