package io.trainguard.tensor.format.torch;

import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.UnverifiableTensorFileException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One torch.save archive (torch >= 1.6 zip layout, as torch 1.13 and 2.x write it), read without
 * executing anything: {@code <root>/data.pkl} through {@link RestrictedUnpickler}, every tensor
 * mapped to its storage record {@code <root>/data/<key>} and checked against it (dtype size,
 * element count, the view inside the storage). The records' bytes stay in the file; only their
 * positions are kept, for the scanner to read them in place.
 */
public final class TorchArchive {
    /** data.pkl of a checkpoint holds names and shapes, not tensor data: kilobytes to a few MB. */
    static final long MAX_PICKLE_BYTES = 64L << 20;

    /** A tensor found in the pickle, named by its path in the saved object ("optimizer.state.0.exp_avg"). */
    public record NamedTensor(String name, TensorRef ref) {
    }

    /** Where a storage's bytes are in the file. */
    public record StorageRecord(StorageRef ref, long position, long bytes) {
    }

    private final List<NamedTensor> tensors;
    private final Map<String, StorageRecord> storages;
    private final byte[] pickle;
    private final Object root;

    private TorchArchive(List<NamedTensor> tensors, Map<String, StorageRecord> storages, byte[] pickle, Object root) {
        this.tensors = tensors;
        this.storages = storages;
        this.pickle = pickle;
        this.root = root;
    }

    public List<NamedTensor> tensors() {
        return tensors;
    }

    /** The storages the tensors use, by key, each once however many tensors share it. */
    public Map<String, StorageRecord> storages() {
        return storages;
    }

    public byte[] pickle() {
        return pickle.clone();
    }

    /** The unpickled object (data only). */
    public Object root() {
        return root;
    }

    /**
     * Reads the archive at {@code [base, base + length)} of {@code ch}; {@code source} names it in
     * messages and {@code namePrefix} prefixes tensor names. REJECTED for a truncated, lying or
     * code-carrying archive; UNVERIFIABLE for compressed records (not written by torch.save).
     */
    public static TorchArchive read(FileChannel ch, long base, long length, String source, String namePrefix)
            throws IOException {
        ZipDirectory dir = ZipDirectory.read(ch, base, length, source);
        ZipDirectory.Entry pkl = null;
        for (ZipDirectory.Entry e : dir.entries().values()) {
            String n = e.name();
            if (n.endsWith("/data.pkl") && n.indexOf('/') == n.length() - "/data.pkl".length()) {
                pkl = e;
            }
        }
        if (pkl == null) {
            throw new RejectedTensorFileException(source + " is a zip archive without <name>/data.pkl: not a "
                    + "torch.save file");
        }
        String rootDir = pkl.name().substring(0, pkl.name().length() - "data.pkl".length());
        for (ZipDirectory.Entry e : dir.entries().values()) {
            if (e.method() != 0) {
                throw new UnverifiableTensorFileException(source + ": zip entry " + e.name() + " is compressed "
                        + "(method " + e.method() + "); torch.save stores entries uncompressed so that they can be "
                        + "read in place. Save it again with torch.save, without recompressing the archive");
            }
        }
        if (pkl.size() > MAX_PICKLE_BYTES) {
            throw new RejectedTensorFileException(source + ": data.pkl is " + pkl.size() + " bytes, over the "
                    + MAX_PICKLE_BYTES + " a checkpoint's pickle needs; it holds more than tensor references");
        }
        byte[] bytes = readBytes(ch, pkl.dataStart(), (int) pkl.size(), source);
        Object root = RestrictedUnpickler.load(bytes, source + " (data.pkl)");
        List<NamedTensor> found = new ArrayList<>();
        collect(namePrefix, root, found, 0);
        Map<String, StorageRecord> storages = new LinkedHashMap<>();
        for (NamedTensor t : found) {
            StorageRef s = t.ref().storage();
            StorageRecord rec = storages.get(s.key());
            if (rec == null) {
                ZipDirectory.Entry e = dir.entries().get(rootDir + "data/" + s.key());
                if (e == null) {
                    throw new RejectedTensorFileException(source + ": tensor '" + t.name() + "' uses storage "
                            + s.key() + ", which the archive does not contain; the file is incomplete");
                }
                long want = s.elements() * s.dtype().byteSize();
                if (e.size() != want) {
                    throw new RejectedTensorFileException(source + ": storage " + s.key() + " holds " + e.size()
                            + " bytes, but data.pkl says " + s.elements() + " " + s.dtype() + " elements ("
                            + want + " bytes); the file is corrupt");
                }
                rec = new StorageRecord(s, e.dataStart(), e.size());
                storages.put(s.key(), rec);
            } else if (rec.ref().dtype() != s.dtype()) {
                throw new RejectedTensorFileException(source + ": storage " + s.key() + " is used as "
                        + rec.ref().dtype() + " and as " + s.dtype());
            }
            long[] span = t.ref().span();
            if (t.ref().offset() < 0 || Arrays.stream(t.ref().stride()).anyMatch(x -> x < 0)
                    || t.ref().shape().length != t.ref().stride().length || span[1] > s.elements()) {
                throw new RejectedTensorFileException(source + ": tensor '" + t.name() + "' (" + t.ref()
                        + ") reaches element " + span[1] + " of storage " + s.key() + ", which has "
                        + s.elements() + "; the file is corrupt");
            }
        }
        return new TorchArchive(List.copyOf(found), storages, bytes, root);
    }

    private static final int MAX_DEPTH = 64;

    /** Every tensor under {@code o}, named by its path of keys and indices. */
    private static void collect(String path, Object o, List<NamedTensor> out, int depth) {
        if (depth > MAX_DEPTH) {
            throw new RejectedTensorFileException("the pickle nests deeper than " + MAX_DEPTH + " levels at " + path);
        }
        if (o instanceof TensorRef t) {
            out.add(new NamedTensor(path.isEmpty() ? "tensor" : path, t));
        } else if (o instanceof Map<?, ?> m) {
            for (Map.Entry<?, ?> e : m.entrySet()) {
                collect(join(path, String.valueOf(e.getKey())), e.getValue(), out, depth + 1);
            }
        } else if (o instanceof List<?> l) {
            for (int i = 0; i < l.size(); i++) {
                collect(join(path, Integer.toString(i)), l.get(i), out, depth + 1);
            }
        } else if (o instanceof Object[] a) {
            for (int i = 0; i < a.length; i++) {
                collect(join(path, Integer.toString(i)), a[i], out, depth + 1);
            }
        } else if (o instanceof PyObject p) {
            collect(path, p.args(), out, depth + 1);
            if (p.state() != null) {
                collect(path, p.state(), out, depth + 1);
            }
        }
    }

    private static String join(String path, String key) {
        return path.isEmpty() ? key : path + "." + key;
    }

    static byte[] readBytes(FileChannel ch, long pos, int n, String source) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(n);
        long at = pos;
        while (b.hasRemaining()) {
            int r = ch.read(b, at);
            if (r < 0) {
                throw new RejectedTensorFileException(source + " ends before byte " + (pos + n)
                        + ": the file is truncated");
            }
            at += r;
        }
        return b.array();
    }
}
