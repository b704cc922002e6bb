package io.trainguard.tensor.format.torch;

import io.trainguard.tensor.format.RejectedTensorFileException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * The central directory of a zip archive that lies at {@code [base, base + length)} of a file
 * (a whole torch.save file, or one of the torch.save blobs a DCP shard concatenates). Only what
 * in-place scanning needs: each entry's method, sizes and the absolute position of its data.
 * java.util.zip.ZipFile cannot do this: it reads whole files only and does not say where an
 * entry's bytes are.
 */
public final class ZipDirectory {
    /** Where one entry's stored bytes are. {@code method} 0 is stored, 8 deflated. */
    public record Entry(String name, int method, long compressedSize, long size, long dataStart) {
    }

    private static final int EOCD_SIG = 0x06054b50;
    private static final int EOCD64_LOCATOR_SIG = 0x07064b50;
    private static final int EOCD64_SIG = 0x06064b50;
    private static final int CEN_SIG = 0x02014b50;
    private static final int LOC_SIG = 0x04034b50;
    /** A central directory larger than this is not a checkpoint's (torch.save: a few KB per tensor). */
    private static final long MAX_DIRECTORY_BYTES = 256L << 20;

    private final Map<String, Entry> entries;

    private ZipDirectory(Map<String, Entry> entries) {
        this.entries = entries;
    }

    public Map<String, Entry> entries() {
        return entries;
    }

    /** Reads the directory; REJECTED (with what is wrong) for a truncated or malformed archive. */
    public static ZipDirectory read(FileChannel ch, long base, long length, String source) throws IOException {
        int tail = (int) Math.min(length, 22 + 65535);
        ByteBuffer end = read(ch, base + length - tail, tail, source);
        int eocd = -1;
        for (int i = tail - 22; i >= 0; i--) {
            if (end.getInt(i) == EOCD_SIG) {
                eocd = i;
                break;
            }
        }
        if (eocd < 0) {
            throw bad(source, "has no zip end-of-central-directory record: the file is truncated or not a "
                    + "torch.save archive");
        }
        long count = end.getShort(eocd + 10) & 0xFFFF;
        long dirSize = end.getInt(eocd + 12) & 0xFFFFFFFFL;
        long dirOffset = end.getInt(eocd + 16) & 0xFFFFFFFFL;
        if (eocd >= 20 && end.getInt(eocd - 20) == EOCD64_LOCATOR_SIG) {
            long eocd64 = end.getLong(eocd - 20 + 8);
            ByteBuffer z = read(ch, base + eocd64, 56, source);
            if (z.getInt(0) != EOCD64_SIG) {
                throw bad(source, "has a broken zip64 end record");
            }
            count = z.getLong(32);
            dirSize = z.getLong(40);
            dirOffset = z.getLong(48);
        }
        if (dirSize > MAX_DIRECTORY_BYTES || dirOffset + dirSize > length || count > dirSize / 46) {
            throw bad(source, "has a zip directory that does not fit the file (" + count + " entries, "
                    + dirSize + " bytes at " + dirOffset + "): the file is truncated or corrupt");
        }
        ByteBuffer dir = read(ch, base + dirOffset, (int) dirSize, source);
        Map<String, Entry> out = new LinkedHashMap<>();
        int p = 0;
        for (long i = 0; i < count; i++) {
            if (p + 46 > dir.limit() || dir.getInt(p) != CEN_SIG) {
                throw bad(source, "has a corrupt zip directory at entry " + i);
            }
            int method = dir.getShort(p + 10) & 0xFFFF;
            long csize = dir.getInt(p + 20) & 0xFFFFFFFFL;
            long size = dir.getInt(p + 24) & 0xFFFFFFFFL;
            int nameLen = dir.getShort(p + 28) & 0xFFFF;
            int extraLen = dir.getShort(p + 30) & 0xFFFF;
            int commentLen = dir.getShort(p + 32) & 0xFFFF;
            long local = dir.getInt(p + 42) & 0xFFFFFFFFL;
            if (p + 46 + nameLen + extraLen > dir.limit()) {
                throw bad(source, "has a corrupt zip directory at entry " + i);
            }
            byte[] nameBytes = new byte[nameLen];
            dir.get(p + 46, nameBytes);
            String name = new String(nameBytes, StandardCharsets.UTF_8);
            // zip64: the fields that were 0xFFFFFFFF follow in the extra field 0x0001, in this order
            for (int x = p + 46 + nameLen, xEnd = x + extraLen; x + 4 <= xEnd; ) {
                int id = dir.getShort(x) & 0xFFFF;
                int len = dir.getShort(x + 2) & 0xFFFF;
                if (id == 1) {
                    int q = x + 4;
                    if (size == 0xFFFFFFFFL) {
                        size = dir.getLong(q);
                        q += 8;
                    }
                    if (csize == 0xFFFFFFFFL) {
                        csize = dir.getLong(q);
                        q += 8;
                    }
                    if (local == 0xFFFFFFFFL) {
                        local = dir.getLong(q);
                    }
                }
                x += 4 + len;
            }
            p += 46 + nameLen + extraLen + commentLen;
            ByteBuffer loc = read(ch, base + local, 30, source);
            if (loc.getInt(0) != LOC_SIG) {
                throw bad(source, "entry " + name + " points at byte " + local + ", which is not a zip entry");
            }
            long dataStart = local + 30 + (loc.getShort(26) & 0xFFFF) + (loc.getShort(28) & 0xFFFF);
            if (dataStart + csize > dirOffset) {
                throw bad(source, "entry " + name + " (" + csize + " bytes at " + dataStart
                        + ") runs past the archive's data: the file is truncated or corrupt");
            }
            out.put(name, new Entry(name, method, csize, size, base + dataStart));
        }
        return new ZipDirectory(out);
    }

    private static ByteBuffer read(FileChannel ch, long pos, int n, String source) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(n).order(ByteOrder.LITTLE_ENDIAN);
        long at = pos;
        while (b.hasRemaining()) {
            int r = ch.read(b, at);
            if (r < 0) {
                throw bad(source, "ends before byte " + (pos + n) + ": the file is truncated");
            }
            at += r;
        }
        return b.flip();
    }

    private static RejectedTensorFileException bad(String source, String what) {
        return new RejectedTensorFileException(source + " " + what);
    }
}
