package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.FileSnapshot;
import io.trainguard.tensor.format.MappedWindow;
import io.trainguard.tensor.format.ReadBuffer;
import io.trainguard.tensor.format.ReadMode;
import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.SafetensorsFile;
import io.trainguard.tensor.format.ScanSource;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.format.TensorEntry;
import io.trainguard.tensor.format.TensorFileException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorCompletionService;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.zip.CRC32C;

/**
 * Finite check, per-tensor statistics and content checksum of a safetensors file, in parallel
 * over units of at most {@code chunkBytes}. Each unit is either mapped and scanned in place
 * ({@link ReadMode#MAP}) or read in {@link #READ_BYTES} pieces into one reused direct buffer per
 * thread ({@link ReadMode#PREAD}): memory is bounded by threads x chunkBytes of mapped page cache,
 * or threads x 128 KiB of buffers, whatever the file size, and nothing of the data is copied to
 * the heap.
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
    private final ThreadLocal<ByteBuffer> readBuffer = ThreadLocal.withInitial(
            () -> ReadBuffer.allocate(READ_BYTES));
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
        if (!options.simd() || !ScanKernels.SIMD_AVAILABLE) {
            return "nothing (scalar kernels)";
        }
        ByteBuffer b = ByteBuffer.allocateDirect(WARM_UP_TENSOR_BYTES).order(ByteOrder.LITTLE_ENDIAN);
        fillFinite(b);
        // 2 KiB calls got C2 to compile the kernels within about a second; 256-byte calls never
        // reached its thresholds.
        // The buffer classes a scan passes, so that C2 compiles for them and a real scan finds no
        // class the compiled code did not expect (that threw the compiled scan loop away at the
        // first verification): mapped units are read-only direct buffers, pread buffers writable
        // ones, and the file's header goes through the same loop from a heap buffer.
        ByteBuffer small = b.duplicate().limit(2048).slice().order(ByteOrder.LITTLE_ENDIAN);
        if (readMode == ReadMode.MAP) {
            small = small.asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
        }
        ByteBuffer header = ByteBuffer.allocate(2048).order(ByteOrder.LITTLE_ENDIAN);
        ScanOptions headerOptions = new ScanOptions(options.checksum(), false, options.simd());
        for (int round = 0; round < WARM_UP_CALLS; round++) {
            for (TensorDType t : WARM_UP_DTYPES) {
                CRC32C crc = options.checksum() == Checksum.CRC32C ? new CRC32C() : null;
                ScanKernels.scanInto(small, 0, small.capacity(), t, new ScanAccumulator(), options, crc);
            }
            ScanKernels.scan(header, 0, header.capacity(), TensorDType.U8, new ScanAccumulator(), headerOptions);
        }
        String done = "kernels";
        Path file = null;
        try {
            file = Files.createTempFile("trainguard-warmup-", ".safetensors");
            writeWarmUpCheckpoint(file, b);
            for (int round = 0; round < WARM_UP_SCANS; round++) {
                try (SafetensorsFile f = SafetensorsFile.open(file)) {
                    scan(f, options, ScanProgress.NONE);
                }
            }
            done = "kernels and " + WARM_UP_SCANS + " scans of a synthetic checkpoint";
        } catch (IOException e) {
            done = "kernels only (no temp file for a synthetic checkpoint: " + e.getMessage() + ")";
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            if (file != null) {
                file.toFile().delete();
            }
        }
        // Until compiled, every vector was a heap object: a few hundred MB of garbage that made the
        // collector grow the heap. One full collection gives that memory back to the system.
        System.gc();
        return done;
    }

    private static final int WARM_UP_CALLS = 8000;
    private static final int WARM_UP_SCANS = 300;
    private static final int WARM_UP_TENSOR_BYTES = 256 << 10;
    private static final TensorDType[] WARM_UP_DTYPES = {TensorDType.F32, TensorDType.BF16, TensorDType.F16};

    private static void fillFinite(ByteBuffer b) {
        for (int i = 0; i + 2 <= b.capacity(); i += 2) {
            // bit 14 of every 16-bit half clear: finite read as fp32, bf16 and fp16 alike
            b.putShort(i, (short) ((i * 37) & 0xBBFF));
        }
    }

    /** One tensor of each warmed-up dtype, each holding {@code data}'s bytes. */
    private static void writeWarmUpCheckpoint(Path file, ByteBuffer data) throws IOException {
        StringBuilder header = new StringBuilder("{");
        long offset = 0;
        int bytes = data.capacity();
        for (TensorDType t : WARM_UP_DTYPES) {
            header.append(offset == 0 ? "" : ",").append('"').append(t).append("\":{\"dtype\":\"").append(t)
                    .append("\",\"shape\":[").append(bytes / t.byteSize()).append("],\"data_offsets\":[")
                    .append(offset).append(',').append(offset + bytes).append("]}");
            offset += bytes;
        }
        byte[] json = header.append('}').toString().getBytes(java.nio.charset.StandardCharsets.US_ASCII);
        ByteBuffer out = ByteBuffer.allocate(8 + json.length + (int) offset).order(ByteOrder.LITTLE_ENDIAN);
        out.putLong(json.length).put(json);
        for (TensorDType t : WARM_UP_DTYPES) {
            out.put(data.duplicate().clear());
        }
        Files.write(file, out.array());
    }

    public int threads() {
        return threads;
    }

    public ReadMode readMode() {
        return readMode;
    }

    /** A contiguous piece of one tensor; pieces never span two tensors. */
    record Piece(int tensor, int index, long filePos, int length) {
    }

    /** A file range read or mapped by one thread, covering consecutive pieces. */
    record Unit(long filePos, int length, List<Piece> pieces) {
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
        List<Unit> units = plan(entries, dataStart);
        List<List<ScanAccumulator>> perTensor = new ArrayList<>();
        for (int i = 0; i < entries.size(); i++) {
            perTensor.add(new ArrayList<>());
        }
        ExecutorCompletionService<List<ScanAccumulator>> ecs = new ExecutorCompletionService<>(pool);
        List<Future<List<ScanAccumulator>>> futures = new ArrayList<>();
        for (Unit u : units) {
            futures.add(ecs.submit(() -> scanUnit(file, u, entries, options)));
        }
        // Results arrive in any order; pieces are slotted by (tensor, index) and merged in order.
        ScanAccumulator[][] slots = new ScanAccumulator[entries.size()][];
        int[] pieceCounts = new int[entries.size()];
        for (Unit u : units) {
            for (Piece p : u.pieces()) {
                pieceCounts[p.tensor()] = Math.max(pieceCounts[p.tensor()], p.index() + 1);
            }
        }
        for (int i = 0; i < slots.length; i++) {
            slots[i] = new ScanAccumulator[Math.max(1, pieceCounts[i])];
        }
        long total = file.fileSize() - dataStart;
        long done = 0;
        try {
            for (int k = 0; k < units.size(); k++) {
                Future<List<ScanAccumulator>> f = ecs.take();
                int unitIndex = futures.indexOf(f);
                Unit u = units.get(unitIndex);
                List<ScanAccumulator> accs = f.get();
                for (int j = 0; j < accs.size(); j++) {
                    Piece p = u.pieces().get(j);
                    slots[p.tensor()][p.index()] = accs.get(j);
                }
                done += u.length();
                progress.onProgress(done, total);
            }
        } catch (ExecutionException e) {
            futures.forEach(f -> f.cancel(true));
            throw unitFailure(file, e.getCause());
        } catch (InterruptedException | RuntimeException e) {
            futures.forEach(f -> f.cancel(true));
            throw e;
        }
        FileSnapshot after = FileSnapshot.of(file.path());
        String diff = file.snapshot().differenceTo(after);
        if (!diff.isEmpty()) {
            throw changed(file, diff);
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

    private List<Unit> plan(List<TensorEntry> entries, long dataStart) {
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

    private List<ScanAccumulator> scanUnit(ScanSource file, Unit u, List<TensorEntry> entries,
            ScanOptions options) throws IOException {
        // A writer that truncates or appends is seen here, and as a short read or a fault below.
        requireSameSize(file);
        if (readMode == ReadMode.PREAD) {
            return readAndScan(file, u, entries, options);
        }
        MappedWindow window;
        try {
            window = file.map(u.filePos(), u.length());
        } catch (IOException e) {
            requireSameSize(file); // the file shrank since the check above
            throw e;
        }
        try (window) {
            return scanMapped(file, window, u, entries, options);
        }
    }

    /**
     * Scans the pieces of {@code u} in {@code window}, which maps exactly {@code u}'s range.
     *
     * <p>A read of a mapped page that the file no longer has (a writer truncated it) is a SIGBUS,
     * which HotSpot turns into an {@link InternalError}, thrown not at the read but at the thread's
     * next call into the runtime (on JDK 17, often only when the caller handles an exception), so
     * no catch in here can be relied on: {@link #unitFailure} interprets it where the unit's task
     * ends. The size check after the loop makes sure such a task ends by throwing.
     */
    static List<ScanAccumulator> scanMapped(ScanSource file, MappedWindow window, Unit u,
            List<TensorEntry> entries, ScanOptions options) throws IOException {
        ByteBuffer b = window.buffer();
        List<ScanAccumulator> out = new ArrayList<>(u.pieces().size());
        for (Piece p : u.pieces()) {
            ScanAccumulator a = new ScanAccumulator();
            ScanKernels.scan(b, (int) (p.filePos() - u.filePos()), p.length(), entries.get(p.tensor()).dtype(), a,
                    options);
            out.add(a);
        }
        requireSameSize(file);
        return out;
    }

    /**
     * What the failure {@code cause} of a unit's task means for the scan: IOExceptions are thrown,
     * anything else is returned for the caller to throw.
     */
    static RuntimeException unitFailure(ScanSource file, Throwable cause) throws IOException {
        if (cause instanceof TensorFileException tfe) {
            return tfe;
        }
        if (cause instanceof InternalError && file.currentSize() != file.fileSize()) {
            // HotSpot's report of the SIGBUS from reading a mapped page past the file's new end
            return changed(file, "it was truncated from " + file.fileSize() + " to " + file.currentSize()
                    + " bytes while being read");
        }
        if (cause instanceof IOException io) {
            throw io;
        }
        return new IllegalStateException("tensor scan failed: " + cause, cause);
    }

    private List<ScanAccumulator> readAndScan(ScanSource file, Unit u, List<TensorEntry> entries,
            ScanOptions options) throws IOException {
        ByteBuffer buf = readBuffer.get();
        List<ScanAccumulator> out = new ArrayList<>(u.pieces().size());
        for (Piece p : u.pieces()) {
            TensorDType dtype = entries.get(p.tensor()).dtype();
            ScanAccumulator a = new ScanAccumulator();
            CRC32C crc = options.checksum() == Checksum.CRC32C ? new CRC32C() : null;
            for (long at = p.filePos(), end = p.filePos() + p.length(); at < end; ) {
                int n = (int) Math.min(buf.capacity(), end - at);
                buf.clear().limit(n);
                if (!file.read(at, buf)) {
                    throw changed(file, "it ended before byte " + (at + n) + " while being read");
                }
                ScanKernels.scanInto(buf, 0, n, dtype, a, options, crc);
                at += n;
            }
            if (crc != null) {
                a.setCrc((int) crc.getValue(), p.length());
            }
            out.add(a);
        }
        return out;
    }

    private static void requireSameSize(ScanSource file) throws IOException {
        long now = file.currentSize();
        if (now != file.fileSize()) {
            throw changed(file, "its size changed from " + file.fileSize() + " to " + now + " bytes");
        }
    }

    private static RejectedTensorFileException changed(ScanSource file, String what) {
        return new RejectedTensorFileException(file.path().getFileName() + ": file changed while being verified: "
                + what + "; register the checkpoint only after it is completely written (write to a temp name, "
                + "fsync, rename)");
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
