package io.trainguard.tensor.format;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.List;

/**
 * A file whose tensor bytes the scanner reads in place: the ranges to scan ({@link #entries()},
 * relative to {@link #dataStart()}), the bytes that precede them for the file checksum, and
 * positional reads or mappings of the open file. Safetensors files and the torch.save/DCP
 * readers both present themselves this way, so they share one scanner and its kernels.
 */
public interface ScanSource {
    Path path();

    /** Size, mtime and inode when opened. */
    FileSnapshot snapshot();

    default long fileSize() {
        return snapshot().size();
    }

    /** The byte ranges to scan, in file order, relative to {@link #dataStart()}. */
    List<TensorEntry> entries();

    long dataStart();

    /** Metadata bytes (safetensors prefix and header, a torch pickle) that the file checksum covers first. */
    byte[] prefixAndHeader();

    long currentSize() throws IOException;

    boolean read(long pos, ByteBuffer dst) throws IOException;

    MappedWindow map(long pos, int length) throws IOException;
}
