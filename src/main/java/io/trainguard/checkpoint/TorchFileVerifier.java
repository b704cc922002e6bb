package io.trainguard.checkpoint;

import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.SegmentedFile;
import io.trainguard.tensor.format.torch.DcpMetadata;
import io.trainguard.tensor.format.torch.TorchArchive;
import io.trainguard.tensor.scan.ScanOptions;
import io.trainguard.tensor.scan.ScanResult;
import io.trainguard.tensor.scan.TensorScanner;
import io.trainguard.tensor.scan.TensorStats;
import io.trainguard.tensor.scan.TorchStorageScan;
import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.function.LongConsumer;

/**
 * Verifies files written by torch.save (state dicts, whole training states, Lightning .ckpt):
 * the pickle read without running it, every storage scanned in place with the vector kernels.
 */
final class TorchFileVerifier {
    private final TensorScanner scanner;

    TorchFileVerifier(TensorScanner scanner) {
        this.scanner = scanner;
    }

    List<TensorStats> verifyTorchSave(Path p, ScanOptions scan, Map<String, String> sums, LongConsumer progressAt,
            long base) throws IOException, InterruptedException {
        try (SegmentedFile f = SegmentedFile.open(p)) {
            String name = p.getFileName().toString();
            TorchArchive a = TorchArchive.read(f.channel(), 0, f.fileSize(), name, "");
            ScanResult r = TorchStorageScan.scan(scanner, f, List.of(a), scan, (done, tot) -> progressAt.accept(base + done));
            progressAt.accept(base + f.fileSize());
            if (r.fileChecksum() != null) {
                sums.put(p.toString(), r.fileChecksum());
            }
            return r.tensors();
        }
    }

    /**
     * Verifies a torch.distributed.checkpoint directory through its {@code .metadata}: the chunks
     * tile every tensor exactly, every shard holds what the metadata says, every stored tensor is
     * scanned (a shard's chunks together, in place).
     */
    List<TensorStats> verifyDcp(Path metadataFile, ScanOptions scan, Map<String, String> sums, LongConsumer progressAt,
            long base) throws IOException, InterruptedException {
        String source = metadataFile.getFileName().toString();
        long mdSize = java.nio.file.Files.size(metadataFile);
        if (mdSize > (64L << 20)) {
            throw new RejectedTensorFileException(source + " is " + mdSize + " bytes; DCP metadata is kilobytes to "
                    + "a few MB");
        }
        DcpMetadata md = DcpMetadata.parse(java.nio.file.Files.readAllBytes(metadataFile), source);
        Map<String, List<Object>> byFile = new java.util.TreeMap<>();
        md.chunks().forEach(c -> byFile.computeIfAbsent(c.file(), k -> new java.util.ArrayList<>()).add(c));
        md.blobs().forEach(b -> byFile.computeIfAbsent(b.file(), k -> new java.util.ArrayList<>()).add(b));
        List<TensorStats> all = new java.util.ArrayList<>();
        long done = base;
        for (Map.Entry<String, List<Object>> e : byFile.entrySet()) {
            Path shard = metadataFile.resolveSibling(e.getKey()).normalize();
            if (!shard.getParent().equals(metadataFile.getParent()) || !java.nio.file.Files.isRegularFile(shard)) {
                throw new RejectedTensorFileException(source + " names shard " + e.getKey()
                        + ", which is not in the checkpoint directory; the checkpoint is incomplete");
            }
            try (SegmentedFile f = SegmentedFile.open(shard)) {
                List<TorchArchive> archives = new java.util.ArrayList<>();
                for (Object item : e.getValue()) {
                    if (item instanceof DcpMetadata.Chunk c) {
                        String where = e.getKey() + "@" + c.position();
                        if (c.position() + c.length() > f.fileSize()) {
                            throw new RejectedTensorFileException(where + ": chunk " + c.label() + " ends at byte "
                                    + (c.position() + c.length()) + " of a " + f.fileSize() + "-byte shard; the "
                                    + "shard is truncated");
                        }
                        TorchArchive a = TorchArchive.read(f.channel(), c.position(), c.length(), where, c.label());
                        if (a.tensors().size() != 1 || !java.util.Arrays.equals(a.tensors().get(0).ref().shape(),
                                c.sizes())) {
                            throw new RejectedTensorFileException(where + ": chunk " + c.label() + " should hold one "
                                    + "tensor of shape " + java.util.Arrays.toString(c.sizes()) + " but holds "
                                    + a.tensors().size() + " tensors");
                        }
                        archives.add(a);
                    } else {
                        DcpMetadata.Blob b = (DcpMetadata.Blob) item;
                        String where = e.getKey() + "@" + b.position();
                        if (b.position() + b.length() > f.fileSize()) {
                            throw new RejectedTensorFileException(where + ": item " + b.fqn() + " runs past the end "
                                    + "of the shard; the shard is truncated");
                        }
                        archives.add(TorchArchive.read(f.channel(), b.position(), b.length(), where, b.fqn()));
                    }
                }
                long at = done;
                ScanResult r = TorchStorageScan.scan(scanner, f, archives, scan, (d, t) -> progressAt.accept(at + d));
                done += f.fileSize();
                progressAt.accept(done);
                if (r.fileChecksum() != null) {
                    sums.put(shard.toString(), r.fileChecksum());
                }
                all.addAll(r.tensors());
            }
        }
        return all;
    }
}
