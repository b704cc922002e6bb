package io.trainguard.tensor.format;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * Direct buffers that file reads copy into, page-aligned. A large direct buffer comes from its
 * own mmap whose data starts 16 bytes into a page, and the kernel's copy out of the page cache
 * (page-aligned source, `rep movsb`) ran five times slower into such a destination on the AMD
 * benchmark machine: 1.6–2.0 GB/s per thread against 8.5–9.5 GB/s into the same buffer shifted
 * to a page or 64-byte boundary (`ReadBench` with and without the alignment).
 */
public final class ReadBuffer {
    private static final int PAGE = 4096;

    private ReadBuffer() {
    }

    /** A little-endian direct buffer of exactly {@code bytes} capacity starting on a page boundary. */
    public static ByteBuffer allocate(int bytes) {
        return ByteBuffer.allocateDirect(bytes + PAGE).alignedSlice(PAGE).slice(0, bytes)
                .order(ByteOrder.LITTLE_ENDIAN);
    }
}
