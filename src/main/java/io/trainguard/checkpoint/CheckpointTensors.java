package io.trainguard.checkpoint;

import io.trainguard.tensor.format.FormatSniffer;
import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.SafetensorsFile;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.format.TensorEntry;
import io.trainguard.tensor.format.UnverifiableTensorFileException;
import io.trainguard.tensor.format.torch.TensorRef;
import io.trainguard.tensor.format.torch.TorchArchive;
import io.trainguard.tensor.inspect.TensorBytes;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * The tensors of a checkpoint's files, each readable in pieces where it lies in its file, for
 * forensics: safetensors entries, torch.save tensors (through the restricted unpickler, views of
 * their storages) and DCP chunks (through the restricted .metadata reader). Only names, shapes
 * and positions are held; bytes are read on demand. Keeps the files open until closed.
 */
public final class CheckpointTensors implements AutoCloseable {
    /** A tensor and the file (name) it is in. */
    public record FileTensor(String file, TensorBytes tensor) {
    }

    private final List<FileChannel> open = new ArrayList<>();
    private final List<FileTensor> tensors = new ArrayList<>();

    private CheckpointTensors() {
    }

    public List<FileTensor> tensors() {
        return List.copyOf(tensors);
    }

    /**
     * Opens every file of the checkpoint (directories expanded as at registration). TensorFileException
     * when a file cannot be read as tensors (a legacy pickle, TorchScript, numpy: not mapped here).
     */
    public static CheckpointTensors open(List<CheckpointFileSpec> files, PathPolicy paths) throws IOException {
        CheckpointTensors c = new CheckpointTensors();
        try {
            for (CheckpointFileSpec f : CheckpointFiles.expand(files, paths)) {
                Path p = paths.resolve(f.path());
                if (CheckpointFiles.isShardIndex(p) || CheckpointFiles.isDcpShard(p)) {
                    continue; // an index holds no tensors; shards are read through their .metadata
                }
                if (CheckpointFiles.isDcpMetadata(p)) {
                    c.addDcp(p);
                    continue;
                }
                FormatSniffer.Kind kind = FormatSniffer.sniff(p);
                switch (kind) {
                    case TORCH_ZIP_PICKLE -> c.addTorchSave(p);
                    case SAFETENSORS_OR_UNKNOWN -> c.addSafetensors(p);
                    default -> throw new UnverifiableTensorFileException(p.getFileName() + " is "
                            + kind.name().toLowerCase(java.util.Locale.ROOT).replace('_', ' ')
                            + "; checkpoint forensics reads safetensors, torch.save zip files and DCP directories");
                }
            }
            return c;
        } catch (IOException | RuntimeException e) {
            c.close();
            throw e;
        }
    }

    private FileChannel channel(Path p) throws IOException {
        FileChannel ch = FileChannel.open(p);
        open.add(ch);
        return ch;
    }

    private void addSafetensors(Path p) throws IOException {
        long dataStart;
        List<TensorEntry> entries;
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            dataStart = f.dataStart();
            entries = f.entries();
        }
        FileChannel ch = channel(p);
        String file = p.getFileName().toString();
        for (TensorEntry e : entries) {
            tensors.add(new FileTensor(file, new Contiguous(e.name(), e.dtype(), e.shape(), ch,
                    dataStart + e.begin(), file)));
        }
    }

    private void addTorchSave(Path p) throws IOException {
        FileChannel ch = channel(p);
        String file = p.getFileName().toString();
        addArchive(file, ch, TorchArchive.read(ch, 0, ch.size(), file, ""));
    }

    private void addDcp(Path metadata) throws IOException {
        DcpLayout layout = DcpLayout.read(metadata);
        for (Map.Entry<String, List<DcpLayout.Item>> e : layout.byShard().entrySet()) {
            FileChannel ch = channel(layout.shard(e.getKey()));
            for (DcpLayout.Item item : e.getValue()) {
                addArchive(item.shard(), ch, DcpLayout.archive(ch, ch.size(), item));
            }
        }
    }

    private void addArchive(String file, FileChannel ch, TorchArchive a) {
        for (TorchArchive.NamedTensor t : a.tensors()) {
            TensorRef r = t.ref();
            TorchArchive.StorageRecord s = a.storages().get(r.storage().key());
            TensorDType dt = r.storage().dtype();
            if (cOrder(r.shape(), r.stride())) {
                tensors.add(new FileTensor(file, new Contiguous(t.name(), dt, r.shape(), ch,
                        s.position() + r.offset() * dt.byteSize(), file)));
            } else {
                tensors.add(new FileTensor(file, new Strided(t.name(), dt, r, ch, s, file)));
            }
        }
    }

    @Override
    public void close() {
        for (FileChannel ch : open) {
            try {
                ch.close();
            } catch (IOException ignored) {
                // read-only channel: nothing to lose
            }
        }
        open.clear();
    }

    /** True when the view's elements lie in C order one after another (dimensions of size 1 ignored). */
    static boolean cOrder(long[] shape, long[] stride) {
        long want = 1;
        for (int d = shape.length - 1; d >= 0; d--) {
            if (shape[d] != 1 && stride[d] != want) {
                return false;
            }
            want *= shape[d];
        }
        return true;
    }

    private static void fill(FileChannel ch, long pos, ByteBuffer dst, String file) throws IOException {
        long at = pos;
        while (dst.hasRemaining()) {
            int n = ch.read(dst, at);
            if (n < 0) {
                throw new RejectedTensorFileException(file + " ends before byte " + (pos + dst.remaining())
                        + "; it was truncated after verification");
            }
            at += n;
        }
    }

    /** A tensor stored in C order at {@code position}. */
    private record Contiguous(String name, TensorDType dtype, long[] shape, FileChannel ch, long position, String file)
            implements TensorBytes {
        @Override
        public void read(long from, int count, ByteBuffer dst) throws IOException {
            int size = dtype.byteSize();
            ByteBuffer d = dst.slice(dst.position(), count * size);
            fill(ch, position + from * size, d, file);
            dst.position(dst.position() + count * size);
        }
    }

    /**
     * A view with strides (a transposed weight, a slice): its storage mapped, elements gathered in
     * C order. Storages over 2 GiB that are only viewed with strides are refused.
     */
    private static final class Strided implements TensorBytes {
        private final String name;
        private final TensorDType dtype;
        private final TensorRef ref;
        private final FileChannel ch;
        private final TorchArchive.StorageRecord storage;
        private final String file;
        private MappedByteBuffer mapped;

        Strided(String name, TensorDType dtype, TensorRef ref, FileChannel ch, TorchArchive.StorageRecord storage,
                String file) {
            this.name = name;
            this.dtype = dtype;
            this.ref = ref;
            this.ch = ch;
            this.storage = storage;
            this.file = file;
        }

        @Override
        public String name() {
            return name;
        }

        @Override
        public TensorDType dtype() {
            return dtype;
        }

        @Override
        public long[] shape() {
            return ref.shape();
        }

        @Override
        public void read(long from, int count, ByteBuffer dst) throws IOException {
            if (mapped == null) {
                if (storage.bytes() > Integer.MAX_VALUE) {
                    throw new UnverifiableTensorFileException(file + ": tensor '" + name + "' is a strided view of a "
                            + storage.bytes() + "-byte storage; forensics gathers strided views of storages up "
                            + "to 2 GiB");
                }
                mapped = ch.map(FileChannel.MapMode.READ_ONLY, storage.position(), storage.bytes());
                mapped.order(ByteOrder.LITTLE_ENDIAN);
            }
            long[] shape = ref.shape();
            long[] stride = ref.stride();
            long[] idx = new long[shape.length];
            long rest = from;
            for (int d = shape.length - 1; d >= 0; d--) {
                idx[d] = rest % shape[d];
                rest /= shape[d];
            }
            int size = dtype.byteSize();
            int last = shape.length - 1;
            // Runs along the last dimension are copied in one piece where it has stride 1 (a slice);
            // otherwise (a transposed weight) one element at a time, with no buffer made per element.
            boolean rows = last >= 0 && stride[last] == 1;
            for (int i = 0; i < count; ) {
                long e = ref.offset();
                for (int d = 0; d < shape.length; d++) {
                    e += idx[d] * stride[d];
                }
                int run = rows ? (int) Math.min(count - i, shape[last] - idx[last]) : 1;
                dst.put(dst.position(), mapped, Math.toIntExact(e * size), run * size);
                dst.position(dst.position() + run * size);
                i += run;
                if (last >= 0) { // the next index in C order
                    idx[last] += run;
                    for (int d = last; d > 0 && idx[d] >= shape[d]; d--) {
                        idx[d] = 0;
                        idx[d - 1]++;
                    }
                }
            }
        }
    }
}
