package io.trainguard.tensor.scan;

import io.trainguard.checkpoint.CheckpointFileSpec;
import io.trainguard.checkpoint.CheckpointFormat;
import io.trainguard.checkpoint.CheckpointVerifier;
import io.trainguard.checkpoint.PathPolicy;
import io.trainguard.checkpoint.VerificationResult;
import io.trainguard.tensor.format.FormatSniffer;
import io.trainguard.tensor.format.ReadMode;
import io.trainguard.tensor.format.SafetensorsFile;
import io.trainguard.tensor.inspect.DjlTensors;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * Benchmark driver for bench/checkpoint/run.sh (not a test): scans each file {@code rounds}
 * times and prints one machine-readable line per round plus RSS.
 * Args: threads checksum(tg1|crc32c|none) rounds file...; -Dread=map|pread (default map), -Dsimd,
 * -Dstats, -Dwarmup, -DidleMs. A torch.save file or a DCP directory (and any file with -Dverifier=true)
 * goes through {@link CheckpointVerifier#verifyNow}, the sidecar's own path (pickle read, storages
 * mapped, DCP chunk coverage), timed from opening the files to the verdict.
 */
public final class ScanBench {
    public static void main(String[] args) throws Exception {
        int threads = Integer.parseInt(args[0]);
        Checksum checksum = Checksum.valueOf(args[1].toUpperCase(java.util.Locale.ROOT));
        int rounds = Integer.parseInt(args[2]);
        boolean stats = !"false".equals(System.getProperty("stats"));
        boolean simd = !"false".equals(System.getProperty("simd"));
        System.out.printf("KERNELS %s%n", simd && ScanKernels.SIMD_AVAILABLE ? "simd" : "scalar");
        System.out.printf("RSS idle_kb=%d%n", rssKb());
        long[] peak = {0};
        Thread sampler = new Thread(() -> {
            while (!Thread.currentThread().isInterrupted()) {
                peak[0] = Math.max(peak[0], rssKb());
                try {
                    Thread.sleep(50);
                } catch (InterruptedException e) {
                    return;
                }
            }
        });
        sampler.setDaemon(true);
        sampler.start();
        ReadMode read = ReadMode.valueOf(System.getProperty("read", "map").toUpperCase(java.util.Locale.ROOT));
        try (TensorScanner scanner = new TensorScanner(threads, TensorScanner.DEFAULT_CHUNK_BYTES, read)) {
            if (Boolean.getBoolean("warmup")) {
                long w0 = System.nanoTime();
                String what = scanner.warmUp(new ScanOptions(checksum, stats, simd));
                System.out.printf("WARMUP ms=%d %s%n", (System.nanoTime() - w0) / 1_000_000, what.replace(' ', '_'));
            }
            Thread.sleep(Long.getLong("idleMs", 0)); // a sidecar idles between start and its first checkpoint
            for (int i = 3; i < args.length; i++) {
                Path p = Path.of(args[i]);
                if (Files.isDirectory(p) || Boolean.getBoolean("verifier")
                        || FormatSniffer.sniff(p) == FormatSniffer.Kind.TORCH_ZIP_PICKLE) {
                    viaVerifier(scanner, p, new ScanOptions(checksum, stats, simd), rounds, threads, checksum);
                    continue;
                }
                List<Double> gbs = new ArrayList<>();
                for (int r = 0; r < rounds; r++) {
                    try (SafetensorsFile f = SafetensorsFile.open(p)) {
                        ScanResult res = scanner.scan(f, new ScanOptions(checksum, stats, simd), ScanProgress.NONE);
                        double g = res.bytes() / (res.nanos() / 1e9) / 1e9;
                        gbs.add(g);
                        System.out.printf("ROUND file=%s threads=%d checksum=%s gbps=%.2f nonfinite_tensors=%d file_checksum=%s%n",
                                p.getFileName(), threads, checksum, g, res.nonFiniteTensors(), res.fileChecksum());
                    }
                }
                Collections.sort(gbs);
                System.out.printf("MEDIAN file=%s threads=%d read=%s checksum=%s stats=%s simd=%s gbps=%.2f size=%d%n",
                        p.getFileName(), threads, scanner.readMode().toString().toLowerCase(java.util.Locale.ROOT),
                        checksum, stats, simd && ScanKernels.SIMD_AVAILABLE, gbs.get(gbs.size() / 2), Files.size(p));
            }
        }
        sampler.interrupt();
        System.out.printf("RSS peak_during_kb=%d%n", peak[0]);
        String npy = System.getProperty("djlNpy");
        if (npy != null) {
            // what the first numpy/TorchScript checkpoint costs: libtorch loaded into the process
            new DjlTensors(Path.of(System.getProperty("user.home"), ".cache", "trainguard", "djl"), 1 << 30)
                    .readNumpy(Path.of(npy), Checksum.TG1);
            System.out.printf("RSS after_djl_loaded_kb=%d%n", rssKb());
        }
    }

    private static void viaVerifier(TensorScanner scanner, Path p, ScanOptions options, int rounds, int threads,
            Checksum checksum) {
        Path root = p.toAbsolutePath().getParent();
        try (CheckpointVerifier v = new CheckpointVerifier(scanner, null, new PathPolicy(List.of(root)), 1, options,
                java.time.Duration.ofHours(1))) {
            List<Double> gbs = new ArrayList<>();
            long bytes = 0;
            for (int r = 0; r < rounds; r++) {
                VerificationResult res = v.verifyNow("bench", CheckpointFormat.SAFETENSORS,
                        List.of(new CheckpointFileSpec(p.toAbsolutePath().toString(), null, 0)), null);
                if (!res.ok()) {
                    throw new IllegalStateException(p + ": " + res.outcome() + " " + res.reason());
                }
                double g = res.bytes() / (res.nanos() / 1e9) / 1e9;
                gbs.add(g);
                bytes = res.bytes();
                System.out.printf("ROUND file=%s threads=%d checksum=%s gbps=%.2f tensors=%d via=verifier%n",
                        p.getFileName(), threads, checksum, g, res.tensors().size());
            }
            Collections.sort(gbs);
            System.out.printf("MEDIAN file=%s threads=%d read=%s checksum=%s stats=%s simd=%s via=verifier gbps=%.2f size=%d%n",
                    p.getFileName(), threads, scanner.readMode().toString().toLowerCase(java.util.Locale.ROOT), checksum,
                    options.stats(), options.simd() && ScanKernels.SIMD_AVAILABLE, gbs.get(gbs.size() / 2), bytes);
        }
    }

    static long rssKb() {
        try {
            for (String l : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (l.startsWith("VmRSS:")) {
                    return Long.parseLong(l.replaceAll("[^0-9]", ""));
                }
            }
        } catch (Exception e) {
            return -1;
        }
        return -1;
    }
}
