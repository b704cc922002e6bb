package io.trainguard.checkpoint;

import io.trainguard.tensor.format.SegmentedFile;
import io.trainguard.tensor.format.torch.TorchArchive;
import io.trainguard.tensor.scan.ScanOptions;
import io.trainguard.tensor.scan.ScanResult;
import io.trainguard.tensor.scan.TensorScanner;
import io.trainguard.tensor.scan.TensorStats;
import io.trainguard.tensor.scan.TorchStorageScan;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
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
        DcpLayout layout = DcpLayout.read(metadataFile);
        List<TensorStats> all = new ArrayList<>();
        long done = base;
        for (Map.Entry<String, List<DcpLayout.Item>> e : layout.byShard().entrySet()) {
            Path shard = layout.shard(e.getKey());
            try (SegmentedFile f = SegmentedFile.open(shard)) {
                List<TorchArchive> archives = new ArrayList<>();
                for (DcpLayout.Item item : e.getValue()) {
                    archives.add(DcpLayout.archive(f.channel(), f.fileSize(), item));
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
