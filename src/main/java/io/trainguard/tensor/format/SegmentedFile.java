package io.trainguard.tensor.format;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;

/**
 * An open file and byte ranges of it to scan, given by a format reader that found where the
 * tensors' bytes are (torch.save zip records, DCP chunks). Positions are absolute.
 */
public final class SegmentedFile implements ScanSource, AutoCloseable {
    private final Path path;
    private final FileChannel channel;
    private final FileSnapshot snapshot;
    private List<TensorEntry> segments = List.of();
    private byte[] metadata = new byte[0];

    private SegmentedFile(Path path, FileChannel channel, FileSnapshot snapshot) {
        this.path = path;
        this.channel = channel;
        this.snapshot = snapshot;
    }

    /** Opens {@code path}; set the ranges with {@link #setSegments} once the reader knows them. */
    public static SegmentedFile open(Path path) throws IOException {
        FileSnapshot snap = FileSnapshot.of(path);
        return new SegmentedFile(path, FileChannel.open(path, StandardOpenOption.READ), snap);
    }

    public FileChannel channel() {
        return channel;
    }

    public void setSegments(List<TensorEntry> segments, byte[] metadata) {
        this.segments = List.copyOf(segments);
        this.metadata = metadata.clone();
    }

    @Override
    public Path path() {
        return path;
    }

    @Override
    public FileSnapshot snapshot() {
        return snapshot;
    }

    @Override
    public List<TensorEntry> entries() {
        return segments;
    }

    @Override
    public long dataStart() {
        return 0;
    }

    @Override
    public byte[] prefixAndHeader() {
        return metadata.clone();
    }

    @Override
    public long currentSize() throws IOException {
        return channel.size();
    }

    @Override
    public boolean read(long pos, ByteBuffer dst) throws IOException {
        long at = pos;
        while (dst.hasRemaining()) {
            int n = channel.read(dst, at);
            if (n < 0) {
                return false;
            }
            at += n;
        }
        return true;
    }

    @Override
    public MappedWindow map(long pos, int length) throws IOException {
        return MappedWindow.map(channel, pos, length, fileSize());
    }

    @Override
    public void close() throws IOException {
        channel.close();
    }
}
