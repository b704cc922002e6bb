package io.trainguard.checkpoint;

import io.trainguard.tensor.format.FormatSniffer;
import io.trainguard.tensor.format.ReadBuffer;
import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.SafetensorsFile;
import io.trainguard.tensor.format.TensorFileException;
import io.trainguard.tensor.format.UnverifiableTensorFileException;
import io.trainguard.tensor.inspect.DjlTensors;
import io.trainguard.tensor.scan.ScanOptions;
import io.trainguard.tensor.scan.ScanResult;
import io.trainguard.tensor.scan.TensorScanner;
import io.trainguard.tensor.scan.TensorStats;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;
import org.jboss.logging.Logger;

/**
 * Verifies the files of a registered checkpoint on a bounded background executor (one checkpoint
 * at a time; the scan itself is parallel in {@link TensorScanner}). Safetensors goes through the
 * streaming scanner; numpy and TorchScript through DJL, loaded on first use; torch.save pickles are
 * UNVERIFIABLE. A client sha256 is checked in a second sequential pass (SHA-256 runs at ~1-2 GB/s,
 * slower than the scan), only when given.
 */
public final class CheckpointVerifier implements AutoCloseable {
    private static final Logger LOG = Logger.getLogger(CheckpointVerifier.class);

    private final TensorScanner scanner;
    private final DjlTensors djl;
    private final PathPolicy paths;
    private final ScanOptions scan;
    private final Duration logEvery;
    private final ThreadPoolExecutor executor;
    private final Map<String, VerificationProgress> running = new ConcurrentHashMap<>();
    private final TorchFileVerifier torchFiles;

    /**
     * @param queueCapacity checkpoints waiting beyond the one being verified
     *                      (trainguard.checkpoint.verify-queue-capacity)
     * @param scan          checksum (trainguard.checkpoint.checksum), per-tensor max|x| and
     *                      L2 norm (trainguard.checkpoint.tensor-stats), vector kernels (trainguard.tensor.simd)
     * @param logEvery      progress log interval for long verifications (trainguard.checkpoint.progress-log-interval)
     */
    public CheckpointVerifier(TensorScanner scanner, DjlTensors djl, PathPolicy paths, int queueCapacity,
            ScanOptions scan, Duration logEvery) {
        this.scanner = scanner;
        this.djl = djl;
        this.paths = paths;
        this.scan = scan;
        this.logEvery = logEvery;
        this.torchFiles = new TorchFileVerifier(scanner);
        this.executor = new ThreadPoolExecutor(1, 1, 0, TimeUnit.MILLISECONDS,
                new ArrayBlockingQueue<>(Math.max(1, queueCapacity)), r -> {
                    Thread t = new Thread(r, "trainguard-checkpoint-verify");
                    t.setDaemon(true);
                    return t;
                });
    }

    /**
     * Queues a verification. The future never completes exceptionally for a bad checkpoint: bad
     * files give a REJECTED/UNVERIFIABLE result; only a bug or an I/O failure of the sidecar does.
     */
    public CompletableFuture<VerificationResult> submit(String checkpointId, CheckpointFormat format,
            List<CheckpointFileSpec> files, Consumer<VerificationProgress> onProgress) {
        try {
            return CompletableFuture.supplyAsync(() -> verifyNow(checkpointId, format, files, onProgress), executor);
        } catch (RejectedExecutionException e) {
            throw new VerificationQueueFullException("checkpoint verification queue is full ("
                    + executor.getQueue().size() + " waiting); register fewer checkpoints at a time or raise "
                    + "trainguard.checkpoint.verify-queue-capacity");
        }
    }

    /** Progress of a verification that is running now. */
    public Optional<VerificationProgress> progress(String checkpointId) {
        return Optional.ofNullable(running.get(checkpointId));
    }

    /** Verifies on the calling thread. */
    public VerificationResult verifyNow(String checkpointId, CheckpointFormat format, List<CheckpointFileSpec> files,
            Consumer<VerificationProgress> onProgress) {
        long t0 = System.nanoTime();
        long[] total = {0};
        List<Path> resolved = new ArrayList<>();
        try {
            files = CheckpointFiles.expand(files, paths);
            for (CheckpointFileSpec f : files) {
                Path p = paths.resolve(f.path());
                long size = Files.size(p);
                if (f.sizeBytes() > 0 && f.sizeBytes() != size) {
                    return VerificationResult.failed(CheckpointState.REJECTED, p.getFileName() + " is " + size
                            + " bytes but was registered as " + f.sizeBytes()
                            + "; the file is incomplete or was rewritten", 0, System.nanoTime() - t0);
                }
                resolved.add(p);
                total[0] += size * (f.sha256() != null ? 2 : 1);
            }
        } catch (PathRefusedException e) {
            return VerificationResult.failed(CheckpointState.REJECTED, e.getMessage(), 0, System.nanoTime() - t0);
        } catch (IOException e) {
            return VerificationResult.failed(CheckpointState.REJECTED, "cannot read checkpoint file: " + e, 0,
                    System.nanoTime() - t0);
        }
        ProgressTracker tracker = new ProgressTracker(checkpointId, total[0], onProgress);
        List<TensorStats> all = new ArrayList<>();
        Map<String, String> sums = new LinkedHashMap<>();
        boolean dcp = resolved.stream().anyMatch(CheckpointFiles::isDcpMetadata);
        Map<Path, List<TensorStats>> byFile = new LinkedHashMap<>();
        try {
            for (int i = 0; i < resolved.size(); i++) {
                Path p = resolved.get(i);
                CheckpointFileSpec spec = files.get(i);
                List<TensorStats> stats;
                if (CheckpointFiles.isDcpMetadata(p)) {
                    stats = torchFiles.verifyDcp(p, scan, sums, tracker::at, tracker.done);
                } else if (CheckpointFiles.isDcpShard(p)) {
                    if (!dcp) {
                        return VerificationResult.failed(CheckpointState.REJECTED, p.getFileName() + " is a "
                                + "torch.distributed.checkpoint shard; register its directory (or its .metadata "
                                + "with it) so that the shards can be checked against the metadata", 0,
                                System.nanoTime() - t0);
                    }
                    continue; // verified through the .metadata
                } else if (CheckpointFiles.isShardIndex(p)) {
                    continue; // checked against the shards below
                } else {
                    stats = verifyFile(p, format, sums, tracker);
                }
                byFile.put(p, stats);
                all.addAll(stats);
                Optional<TensorStats> bad = stats.stream().filter(s -> !s.finite() && !CheckpointFiles.isSentinel(s))
                        .findFirst();
                if (bad.isPresent()) {
                    TensorStats b = bad.get();
                    long nBad = stats.stream().filter(s -> !s.finite() && !CheckpointFiles.isSentinel(s)).count();
                    return new VerificationResult(CheckpointState.REJECTED, p.getFileName() + ": tensor '" + b.name()
                            + "' has " + b.nanCount() + " NaN and " + b.infCount() + " Inf values, first at flat index "
                            + b.firstNonFiniteIndex() + " (" + nBad + " of " + stats.size()
                            + " tensors non-finite); do not resume from this checkpoint",
                            List.copyOf(all), sums, tracker.done, System.nanoTime() - t0);
                }
                if (spec.sha256() != null) {
                    String actual = sha256(p, tracker);
                    if (!actual.equalsIgnoreCase(spec.sha256())) {
                        return new VerificationResult(CheckpointState.REJECTED, p.getFileName()
                                + ": sha256 is " + actual + ", registered " + spec.sha256().toLowerCase(Locale.ROOT)
                                + "; the file differs from what the trainer wrote", List.copyOf(all), sums,
                                tracker.done, System.nanoTime() - t0);
                    }
                    sums.merge(p.toString(), "sha256:" + actual, (a, b) -> a + " " + b);
                }
            }
            for (Path p : resolved) {
                if (CheckpointFiles.isShardIndex(p)) {
                    String mismatch = CheckpointFiles.checkShardIndex(p, byFile);
                    if (!mismatch.isEmpty()) {
                        return new VerificationResult(CheckpointState.REJECTED, mismatch, List.copyOf(all), sums,
                                tracker.done, System.nanoTime() - t0);
                    }
                }
            }
            return new VerificationResult(CheckpointState.VERIFIED, "", List.copyOf(all), sums, tracker.done,
                    System.nanoTime() - t0);
        } catch (UnverifiableTensorFileException e) {
            return new VerificationResult(CheckpointState.UNVERIFIABLE, e.reason(), List.copyOf(all), sums,
                    tracker.done, System.nanoTime() - t0);
        } catch (TensorFileException e) {
            return new VerificationResult(CheckpointState.REJECTED, e.reason(), List.copyOf(all), sums,
                    tracker.done, System.nanoTime() - t0);
        } catch (IOException e) {
            return new VerificationResult(CheckpointState.REJECTED, "cannot read checkpoint file: " + e,
                    List.copyOf(all), sums, tracker.done, System.nanoTime() - t0);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException("verification of " + checkpointId + " interrupted", e);
        } finally {
            running.remove(checkpointId);
            tracker.logEnd();
        }
    }

    private List<TensorStats> verifyFile(Path p, CheckpointFormat format, Map<String, String> sums,
            ProgressTracker tracker) throws IOException, InterruptedException {
        FormatSniffer.Kind kind = FormatSniffer.sniff(p);
        if (kind == FormatSniffer.Kind.LEGACY_PICKLE) {
            throw new UnverifiableTensorFileException(FormatSniffer.pickleReason(p));
        }
        long size = Files.size(p);
        // What the file is decides how it is read, whatever format the checkpoint was registered
        // with: one checkpoint may hold safetensors weights next to a torch.save optimizer state.
        if (kind == FormatSniffer.Kind.TORCH_ZIP_PICKLE) {
            return torchFiles.verifyTorchSave(p, scan, sums, tracker::at, tracker.done);
        }
        // A folder of safetensors weights may also hold numpy arrays (an EMA, metrics, RNG state):
        // read them as what they are, not refused as "not safetensors".
        boolean numpy = kind == FormatSniffer.Kind.NUMPY || kind == FormatSniffer.Kind.ZIP_NUMPY;
        CheckpointFormat readAs = numpy ? CheckpointFormat.NPY : format;
        if (readAs == CheckpointFormat.TORCH_PICKLE) {
            throw new UnverifiableTensorFileException(FormatSniffer.pickleReason(p));
        }
        switch (readAs) {
            case SAFETENSORS: {
                if (kind != FormatSniffer.Kind.SAFETENSORS_OR_UNKNOWN) {
                    throw new RejectedTensorFileException(p.getFileName() + " was registered as safetensors but is "
                            + kind.name().toLowerCase(Locale.ROOT).replace('_', ' '));
                }
                long base = tracker.done;
                try (SafetensorsFile f = SafetensorsFile.open(p)) {
                    ScanResult r = scanner.scan(f, scan, (done, tot) -> tracker.at(base + done));
                    tracker.at(base + size);
                    if (r.fileChecksum() != null) {
                        sums.put(p.toString(), r.fileChecksum());
                    }
                    return r.tensors();
                }
            }
            case NPY:
            case NPZ: {
                List<TensorStats> s = djl.readNumpy(p, scan.checksum());
                tracker.at(tracker.done + size);
                return s;
            }
            case TORCHSCRIPT: {
                if (kind != FormatSniffer.Kind.TORCHSCRIPT_ZIP) {
                    throw new RejectedTensorFileException(p.getFileName()
                            + " was registered as TorchScript but is not a TorchScript archive");
                }
                List<TensorStats> s = djl.readTorchScript(p);
                tracker.at(tracker.done + size);
                return s;
            }
            default:
                throw new UnverifiableTensorFileException("format " + format + " is not verifiable");
        }
    }

    /** Sequential SHA-256 over 1 MiB reads; the scan before has checked the file is unchanged. */
    private static String sha256(Path p, ProgressTracker tracker) throws IOException {
        MessageDigest md;
        try {
            md = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
        ByteBuffer buf = ReadBuffer.allocate(1 << 20);
        try (FileChannel ch = FileChannel.open(p)) {
            long size = ch.size();
            long base = tracker.done;
            for (long pos = 0; pos < size; ) {
                buf.clear();
                int n = ch.read(buf, pos);
                if (n < 0) {
                    throw new RejectedTensorFileException(p.getFileName() + ": file shrank while its sha256 was "
                            + "computed; register checkpoints only once completely written");
                }
                md.update(buf.flip());
                pos += n;
                tracker.at(base + pos);
            }
        }
        return HexFormat.of().formatHex(md.digest());
    }

    private final class ProgressTracker {
        final String id;
        final long total;
        final Consumer<VerificationProgress> listener;
        final long start = System.nanoTime();
        long lastLog = start;
        long done;

        ProgressTracker(String id, long total, Consumer<VerificationProgress> listener) {
            this.id = id;
            this.total = total;
            this.listener = listener;
            running.put(id, new VerificationProgress(0, total, 0));
        }

        void at(long bytesDone) {
            done = bytesDone;
            long now = System.nanoTime();
            double bps = now == start ? 0 : bytesDone * 1e9 / (now - start);
            VerificationProgress p = new VerificationProgress(bytesDone, total, bps);
            running.put(id, p);
            if (listener != null) {
                listener.accept(p);
            }
            if (now - lastLog >= logEvery.toNanos()) {
                lastLog = now;
                LOG.infof("checkpoint %s: verified %.1f%% (%d of %d MB) at %.2f GB/s", id, p.fraction() * 100,
                        bytesDone >> 20, total >> 20, bps / 1e9);
            }
        }

        void logEnd() {
            long dt = System.nanoTime() - start;
            if (dt >= logEvery.toNanos()) {
                LOG.infof("checkpoint %s: verification took %.1f s for %d MB", id, dt / 1e9, total >> 20);
            }
        }
    }

    @Override
    public void close() {
        executor.shutdownNow();
    }
}
