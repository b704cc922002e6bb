package io.trainguard.tensor.format.torch;

import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.UnverifiableTensorFileException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;

/**
 * The {@code .metadata} of a torch.distributed.checkpoint directory, read with the restricted
 * unpickler: each tensor's global size and chunks, and where each chunk's bytes are (a torch.save
 * blob at an offset of a {@code .distcp} file). {@link #checkCoverage} proves the chunks tile
 * every tensor exactly.
 */
public final class DcpMetadata {
    /** One chunk of a tensor and where it is stored. */
    public record Chunk(String fqn, long[] offsets, long[] sizes, String file, long position, long length) {
        public String label() {
            return fqn + Arrays.toString(offsets);
        }
    }

    /** A stored item with no tensor chunk (BYTE_IO: a torch.save of a non-tensor value). */
    public record Blob(String fqn, String file, long position, long length) {
    }

    private final Map<String, long[]> tensorSizes;
    private final List<Chunk> chunks;
    private final List<Blob> blobs;

    private DcpMetadata(Map<String, long[]> tensorSizes, List<Chunk> chunks, List<Blob> blobs) {
        this.tensorSizes = tensorSizes;
        this.chunks = chunks;
        this.blobs = blobs;
    }

    public Map<String, long[]> tensorSizes() {
        return tensorSizes;
    }

    public List<Chunk> chunks() {
        return chunks;
    }

    public List<Blob> blobs() {
        return blobs;
    }

    public static DcpMetadata parse(byte[] pickle, String source) {
        Object root = RestrictedUnpickler.load(pickle, source);
        if (!(root instanceof PyObject m) || !m.type().endsWith(".Metadata")) {
            throw new RejectedTensorFileException(source + " is not torch.distributed.checkpoint Metadata");
        }
        Map<?, ?> sdm = (Map<?, ?>) m.attr("state_dict_metadata");
        Map<?, ?> storage = (Map<?, ?>) m.attr("storage_data");
        if (sdm == null || storage == null) {
            throw new RejectedTensorFileException(source + " has no state_dict_metadata/storage_data");
        }
        Map<String, long[]> sizes = new java.util.LinkedHashMap<>();
        List<long[][]> declared = new ArrayList<>();
        List<String> declaredFqn = new ArrayList<>();
        for (Map.Entry<?, ?> e : sdm.entrySet()) {
            String fqn = String.valueOf(e.getKey());
            PyObject md = (PyObject) e.getValue();
            if (md.type().endsWith("TensorStorageMetadata")) {
                sizes.put(fqn, longs(md.attr("size")));
                for (Object c : (List<?>) md.attr("chunks")) {
                    PyObject ch = (PyObject) c;
                    declared.add(new long[][] {longs(ch.attr("offsets")), longs(ch.attr("sizes"))});
                    declaredFqn.add(fqn);
                }
            }
        }
        List<Chunk> chunks = new ArrayList<>();
        List<Blob> blobs = new ArrayList<>();
        for (Map.Entry<?, ?> e : storage.entrySet()) {
            PyObject index = (PyObject) e.getKey();
            PyObject info = (PyObject) e.getValue();
            if (info.attr("transform_descriptors") != null) {
                throw new UnverifiableTensorFileException(source + ": item " + index.attr("fqn") + " is stored "
                        + "through a transform (" + info.attr("transform_descriptors") + "); the sidecar reads "
                        + "plain DCP items only");
            }
            String fqn = String.valueOf(index.attr("fqn"));
            String file = String.valueOf(info.attr("relative_path"));
            long pos = ((Number) info.attr("offset")).longValue();
            long len = ((Number) info.attr("length")).longValue();
            if (!sizes.containsKey(fqn)) {
                blobs.add(new Blob(fqn, file, pos, len));
                continue;
            }
            long[] off = longs(index.attr("offset"));
            long[] sz = null;
            for (int i = 0; i < declared.size(); i++) {
                if (declaredFqn.get(i).equals(fqn) && Arrays.equals(declared.get(i)[0], off)) {
                    sz = declared.get(i)[1];
                }
            }
            if (sz == null) {
                throw new RejectedTensorFileException(source + ": stored chunk " + fqn + Arrays.toString(off)
                        + " is not one of the tensor's chunks in the metadata");
            }
            chunks.add(new Chunk(fqn, off, sz, file, pos, len));
        }
        for (int i = 0; i < declared.size(); i++) {
            long[] off = declared.get(i)[0];
            String fqn = declaredFqn.get(i);
            if (chunks.stream().noneMatch(c -> c.fqn().equals(fqn) && Arrays.equals(c.offsets(), off))) {
                throw new RejectedTensorFileException(source + ": chunk " + fqn + Arrays.toString(off)
                        + " is declared but stored in no shard; the checkpoint is incomplete");
            }
        }
        DcpMetadata d = new DcpMetadata(sizes, chunks, blobs);
        d.checkCoverage(source);
        return d;
    }

    /** Every tensor's chunks lie inside it, do not overlap, and together cover all of it. */
    void checkCoverage(String source) {
        for (Map.Entry<String, long[]> t : tensorSizes.entrySet()) {
            long[] size = t.getValue();
            List<Chunk> mine = chunks.stream().filter(c -> c.fqn().equals(t.getKey())).toList();
            long volume = 0;
            for (Chunk c : mine) {
                if (c.offsets().length != size.length || c.sizes().length != size.length) {
                    throw new RejectedTensorFileException(source + ": chunk " + c.label() + " has the wrong rank");
                }
                for (int d = 0; d < size.length; d++) {
                    if (c.offsets()[d] < 0 || c.sizes()[d] < 0 || c.offsets()[d] + c.sizes()[d] > size[d]) {
                        throw new RejectedTensorFileException(source + ": chunk " + c.label() + " of size "
                                + Arrays.toString(c.sizes()) + " lies outside the tensor " + Arrays.toString(size));
                    }
                }
                volume += Arrays.stream(c.sizes()).reduce(1, (a, b) -> a * b);
            }
            for (int i = 0; i < mine.size(); i++) {
                for (int j = i + 1; j < mine.size(); j++) {
                    if (overlap(mine.get(i), mine.get(j))) {
                        throw new RejectedTensorFileException(source + ": chunks " + mine.get(i).label() + " and "
                                + mine.get(j).label() + " of '" + t.getKey() + "' overlap");
                    }
                }
            }
            long whole = Arrays.stream(size).reduce(1, (a, b) -> a * b);
            if (volume != whole) {
                throw new RejectedTensorFileException(source + ": the chunks of '" + t.getKey() + "' cover "
                        + volume + " of its " + whole + " elements; a shard is missing");
            }
        }
    }

    private static boolean overlap(Chunk a, Chunk b) {
        for (int d = 0; d < a.offsets().length; d++) {
            if (a.offsets()[d] + a.sizes()[d] <= b.offsets()[d] || b.offsets()[d] + b.sizes()[d] <= a.offsets()[d]) {
                return false;
            }
        }
        return true;
    }

    private static long[] longs(Object o) {
        Object v = o instanceof PyObject p ? p.args()[0] : o;
        if (v instanceof List<?> l) {
            v = l.toArray();
        }
        Object[] t = (Object[]) v;
        long[] out = new long[t.length];
        for (int i = 0; i < t.length; i++) {
            out[i] = ((Number) t[i]).longValue();
        }
        return out;
    }
}
