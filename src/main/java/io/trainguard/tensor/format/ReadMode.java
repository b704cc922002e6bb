package io.trainguard.tensor.format;

/** How the scanner gets a checkpoint's bytes out of the page cache. */
public enum ReadMode {
    /**
     * Each work unit mapped read-only, scanned in place, unmapped at once: no copy. On the
     * benchmark machine (Linux 6.18, ext4) 1.3-1.5x the throughput of {@link #PREAD}. The mapped
     * unit counts in the process's RSS while it is scanned (page cache, not heap: threads x
     * scan-chunk-bytes at most).
     */
    MAP,
    /** pread into one small reused buffer per thread: a copy, but works on any file system. */
    PREAD
}
