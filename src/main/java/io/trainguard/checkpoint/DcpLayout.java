package io.trainguard.checkpoint;

import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.torch.DcpMetadata;
import io.trainguard.tensor.format.torch.TorchArchive;
import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * Where a torch.distributed.checkpoint directory's data lies, from its {@code .metadata} (read by the
 * restricted reader): each shard file, confined to the directory, and the items stored in it. The
 * verifier scans them and forensics reads them; both refuse the same broken layouts with the same
 * words.
 */
final class DcpLayout {
    /** DCP metadata is kilobytes to a few MB; anything far larger is not one. */
    static final long MAX_METADATA_BYTES = 64L << 20;

    /** One stored item: a tensor chunk ({@code sizes} its shape) or a blob ({@code sizes} null). */
    record Item(String shard, long position, long length, String label, long[] sizes) {
        String where() {
            return shard + "@" + position;
        }
    }

    private final Path metadataFile;
    private final Map<String, List<Item>> byShard = new TreeMap<>();

    private DcpLayout(Path metadataFile) {
        this.metadataFile = metadataFile;
    }

    static DcpLayout read(Path metadataFile) throws IOException {
        String source = metadataFile.getFileName().toString();
        long size = Files.size(metadataFile);
        if (size > MAX_METADATA_BYTES) {
            throw new RejectedTensorFileException(source + " is " + size + " bytes; DCP metadata is kilobytes to "
                    + "a few MB");
        }
        DcpMetadata md = DcpMetadata.parse(Files.readAllBytes(metadataFile), source);
        DcpLayout layout = new DcpLayout(metadataFile);
        for (DcpMetadata.Chunk c : md.chunks()) {
            layout.add(new Item(c.file(), c.position(), c.length(), c.label(), c.sizes()));
        }
        for (DcpMetadata.Blob b : md.blobs()) {
            layout.add(new Item(b.file(), b.position(), b.length(), b.fqn(), null));
        }
        return layout;
    }

    private void add(Item item) {
        byShard.computeIfAbsent(item.shard(), k -> new ArrayList<>()).add(item);
    }

    /** Shard file name → its items, shards in name order, items in metadata order (chunks, then blobs). */
    Map<String, List<Item>> byShard() {
        return byShard;
    }

    /** The shard's path, which must be a file in the checkpoint directory. */
    Path shard(String name) {
        Path shard = metadataFile.resolveSibling(name).normalize();
        if (!shard.getParent().equals(metadataFile.getParent()) || !Files.isRegularFile(shard)) {
            throw new RejectedTensorFileException(metadataFile.getFileName() + " names shard " + name
                    + ", which is not in the checkpoint directory; the checkpoint is incomplete");
        }
        return shard;
    }

    /**
     * The item's torch.save archive, read from its shard ({@code shardSize} bytes): refused when the
     * item runs past the shard's end, or when a chunk does not hold exactly one tensor of its shape.
     */
    static TorchArchive archive(FileChannel shard, long shardSize, Item item) throws IOException {
        String what = (item.sizes() != null ? "chunk " : "item ") + item.label();
        long end = item.position() + item.length();
        if (end > shardSize) {
            throw new RejectedTensorFileException(item.where() + ": " + what + " ends at byte " + end + " of a "
                    + shardSize + "-byte shard; the shard is truncated");
        }
        TorchArchive a = TorchArchive.read(shard, item.position(), item.length(), item.where(), item.label());
        if (item.sizes() != null
                && (a.tensors().size() != 1 || !Arrays.equals(a.tensors().get(0).ref().shape(), item.sizes()))) {
            String held = a.tensors().size() == 1 ? "one of shape " + Arrays.toString(a.tensors().get(0).ref().shape())
                    : a.tensors().size() + " tensors";
            throw new RejectedTensorFileException(item.where() + ": " + what + " should hold one tensor of shape "
                    + Arrays.toString(item.sizes()) + " but holds " + held);
        }
        return a;
    }
}
