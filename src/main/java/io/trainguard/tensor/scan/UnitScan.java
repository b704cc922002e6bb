package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.MappedWindow;
import io.trainguard.tensor.format.ReadBuffer;
import io.trainguard.tensor.format.ReadMode;
import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.ScanSource;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.format.TensorEntry;
import io.trainguard.tensor.format.TensorFileException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.CRC32C;

/**
 * What one scan thread does with one {@link ScanPlan.Unit}: map it or read it, run the kernels
 * over its pieces, and tell a file that changed underneath (truncated, appended, a SIGBUS from a
 * mapped page) from a bug. Apart from {@link TensorScanner} because this is the part that runs on
 * the pool threads, and where the file-changed rules live.
 */
final class UnitScan {
    private final ReadMode readMode;
    /** One reused direct buffer per pool thread for {@link ReadMode#PREAD}. */
    private final ThreadLocal<ByteBuffer> readBuffer = ThreadLocal.withInitial(
            () -> ReadBuffer.allocate(TensorScanner.READ_BYTES));

    UnitScan(ReadMode readMode) {
        this.readMode = readMode;
    }

    List<ScanAccumulator> scan(ScanSource file, ScanPlan.Unit u, List<TensorEntry> entries,
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
    static List<ScanAccumulator> scanMapped(ScanSource file, MappedWindow window, ScanPlan.Unit u,
            List<TensorEntry> entries, ScanOptions options) throws IOException {
        ByteBuffer b = window.buffer();
        List<ScanAccumulator> out = new ArrayList<>(u.pieces().size());
        for (ScanPlan.Piece p : u.pieces()) {
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

    private List<ScanAccumulator> readAndScan(ScanSource file, ScanPlan.Unit u, List<TensorEntry> entries,
            ScanOptions options) throws IOException {
        ByteBuffer buf = readBuffer.get();
        List<ScanAccumulator> out = new ArrayList<>(u.pieces().size());
        for (ScanPlan.Piece p : u.pieces()) {
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

    static RejectedTensorFileException changed(ScanSource file, String what) {
        return new RejectedTensorFileException(file.path().getFileName() + ": file changed while being verified: "
                + what + "; register the checkpoint only after it is completely written (write to a temp name, "
                + "fsync, rename)");
    }
}
