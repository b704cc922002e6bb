package io.trainguard.tensor.format;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;

/**
 * A safetensors file opened read-only, header validated. Data is never loaded on the heap:
 * callers read it piecewise into small buffers with {@link #read(long, ByteBuffer)} or map it a
 * window at a time with {@link #map(long, int)}.
 */
public final class SafetensorsFile implements ScanSource, AutoCloseable {
    /** Default cap on the JSON header; real headers are kilobytes to a few megabytes. */
    public static final long DEFAULT_MAX_HEADER_BYTES = 100L << 20;

    private final Path path;
    private final FileChannel channel;
    private final FileSnapshot snapshot;
    private final SafetensorsHeader header;
    private final byte[] prefixAndHeader;

    private SafetensorsFile(Path path, FileChannel channel, FileSnapshot snapshot, SafetensorsHeader header,
            byte[] prefixAndHeader) {
        this.path = path;
        this.channel = channel;
        this.snapshot = snapshot;
        this.header = header;
        this.prefixAndHeader = prefixAndHeader;
    }

    public static SafetensorsFile open(Path path) throws IOException {
        return open(path, DEFAULT_MAX_HEADER_BYTES);
    }

    public static SafetensorsFile open(Path path, long maxHeaderBytes) throws IOException {
        FileSnapshot snap = FileSnapshot.of(path);
        FileChannel ch = FileChannel.open(path, StandardOpenOption.READ);
        try {
            long size = ch.size();
            String source = path.getFileName().toString();
            ByteBuffer prefix = ByteBuffer.allocate(SafetensorsHeader.PREFIX_BYTES);
            readFully(ch, prefix, 0);
            long n = SafetensorsHeader.checkPrefix(prefix, size, SafetensorsHeader.maxHeaderBytes(maxHeaderBytes), source);
            byte[] all = new byte[(int) (SafetensorsHeader.PREFIX_BYTES + n)];
            System.arraycopy(prefix.array(), 0, all, 0, SafetensorsHeader.PREFIX_BYTES);
            ByteBuffer json = ByteBuffer.wrap(all, SafetensorsHeader.PREFIX_BYTES, (int) n);
            readFully(ch, json, SafetensorsHeader.PREFIX_BYTES);
            byte[] jsonBytes = java.util.Arrays.copyOfRange(all, SafetensorsHeader.PREFIX_BYTES, all.length);
            SafetensorsHeader h = SafetensorsHeader.parse(jsonBytes, size - SafetensorsHeader.PREFIX_BYTES - n, source);
            return new SafetensorsFile(path, ch, snap, h, all);
        } catch (IOException | RuntimeException e) {
            ch.close();
            throw e;
        }
    }

    private static void readFully(FileChannel ch, ByteBuffer dst, long pos) throws IOException {
        long end = pos + dst.remaining();
        if (!fill(ch, dst, pos)) {
            throw new RejectedTensorFileException("unexpected end of file before byte " + end + "; the file is truncated");
        }
    }

    /** Reads until {@code dst} is full; false when the file ends first. */
    private static boolean fill(FileChannel ch, ByteBuffer dst, long pos) throws IOException {
        long at = pos;
        while (dst.hasRemaining()) {
            int n = ch.read(dst, at);
            if (n < 0) {
                return false;
            }
            at += n;
        }
        return true;
    }

    public Path path() {
        return path;
    }

    public SafetensorsHeader header() {
        return header;
    }

    @Override
    public long dataStart() {
        return header.dataStart();
    }

    public List<TensorEntry> entries() {
        return header.entries();
    }

    /** Size, mtime and inode when opened; compare with a later {@link FileSnapshot#of} to detect writers. */
    public FileSnapshot snapshot() {
        return snapshot;
    }

    public long fileSize() {
        return snapshot.size();
    }

    /** The 8-byte prefix and JSON header exactly as in the file (for the whole-file checksum). */
    public byte[] prefixAndHeader() {
        return prefixAndHeader.clone();
    }

    /** Current size of the open file; a writer truncating or appending shows up here. */
    public long currentSize() throws IOException {
        return channel.size();
    }

    /**
     * Fills {@code dst} (position to limit) from absolute file position {@code pos}; false when
     * the file ends first (it shrank since it was opened).
     */
    public boolean read(long pos, ByteBuffer dst) throws IOException {
        return fill(channel, dst, pos);
    }

    /**
     * Maps {@code length} bytes at file position {@code pos} read-only; IOException when the file
     * has shrunk below that range since it was opened.
     */
    public MappedWindow map(long pos, int length) throws IOException {
        return MappedWindow.map(channel, pos, length, fileSize());
    }

    @Override
    public void close() throws IOException {
        channel.close();
    }
}
