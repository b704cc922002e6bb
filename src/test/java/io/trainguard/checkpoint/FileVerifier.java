package io.trainguard.checkpoint;

import io.trainguard.tensor.format.ReadMode;
import io.trainguard.tensor.inspect.DjlTensors;
import io.trainguard.tensor.scan.ContentHash;
import io.trainguard.tensor.scan.ScanOptions;
import io.trainguard.tensor.scan.TensorScanner;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;

/** For tests: the real checkpoint verifier over the files under one root; close() stops its threads. */
public final class FileVerifier implements AutoCloseable {
    public final PathPolicy paths;
    public final CheckpointVerifier verifier;
    private final TensorScanner scanner;

    public FileVerifier(Path root, int scanThreads, int queueCapacity) {
        scanner = new TensorScanner(scanThreads, ContentHash.BLOCK, ReadMode.MAP);
        paths = new PathPolicy(List.of(root));
        verifier = new CheckpointVerifier(scanner, new DjlTensors(root.resolve("djl"), 1 << 20), paths, queueCapacity,
                ScanOptions.FULL, Duration.ofSeconds(5));
    }

    @Override
    public void close() {
        verifier.close();
        scanner.close();
    }
}
