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
}
