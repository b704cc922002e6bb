package io.trainguard.tensor.format;

import java.io.IOException;
import java.lang.reflect.Field;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;

/**
 * A read-only mapping of part of a file that is unmapped when closed, not when the collector
 * gets to it: a scan maps gigabytes in turn, and mappings left to the GC would stay in the
 * address space and in RSS. The buffer must not be used after {@link #close()}.
 *
 * <p>A file truncated while mapped makes reads past its new end fault; HotSpot turns that fault
 * into an {@link InternalError} in the reading thread, which the scanner reports as a file changed
 * while being verified.
 */
public final class MappedWindow implements AutoCloseable {
    /**
     * For sun.misc.Unsafe#invokeCleaner: on Java 17 the one way to unmap a mapping before the GC
     * collects its buffer (module jdk.unsupported, present in every JDK image Quarkus runs on).
     */
    private static final sun.misc.Unsafe UNSAFE = unsafe();

    private final MappedByteBuffer mapped;
    private final ByteBuffer buffer;
    private boolean closed;

    /**
     * Mappings start and end on 2 MiB boundaries of the file where they can: the page cache of a
     * file system with large folios (ext4 since Linux 6.16) then maps whole 2 MiB folios with one
     * page-table entry each, which spares hundreds of page faults and TLB misses per window.
     */
    static final long ALIGN = 2L << 20;

    private MappedWindow(MappedByteBuffer mapped, int lead, int length) {
        this.mapped = mapped;
        this.buffer = mapped.slice(lead, length).order(ByteOrder.LITTLE_ENDIAN);
    }

    /**
     * Whether mapping is safe and can be undone promptly; otherwise {@link ReadMode#MAP} falls back
     * to pread. Not in a native image: HotSpot turns the SIGBUS of a read past a truncated file's
     * end into an exception, a native image is not known to (a crash of the sidecar would be the
     * price of a checkpoint truncated mid-verification).
     */
    public static boolean available() {
        return UNSAFE != null && !"runtime".equals(System.getProperty("org.graalvm.nativeimage.imagecode"));
    }

    /**
     * Maps {@code length} bytes at {@code pos} of a file of {@code fileSize} bytes (a little more
     * around them, see {@link #ALIGN}); IOException when the file no longer extends that far.
     */
    public static MappedWindow map(FileChannel channel, long pos, int length, long fileSize) throws IOException {
        long start = pos - pos % ALIGN;
        long end = Math.min(fileSize, (pos + length + ALIGN - 1) / ALIGN * ALIGN);
        if (end - start > Integer.MAX_VALUE) { // a map is at most 2 GiB
            start = pos;
            end = pos + length;
        }
        MappedByteBuffer m = channel.map(FileChannel.MapMode.READ_ONLY, start, end - start);
        return new MappedWindow(m, (int) (pos - start), length);
    }

    /** The window's bytes, little-endian, position 0 = file position {@code pos}. */
    public ByteBuffer buffer() {
        return buffer;
    }

    @Override
    public void close() {
        if (!closed) {
            closed = true;
            UNSAFE.invokeCleaner(mapped);
        }
    }

    private static sun.misc.Unsafe unsafe() {
        try {
            Field f = sun.misc.Unsafe.class.getDeclaredField("theUnsafe");
            f.setAccessible(true);
            return (sun.misc.Unsafe) f.get(null);
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            return null;
        }
    }
}
