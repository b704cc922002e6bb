package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.ReadBuffer;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/**
 * The ceiling a scan works under: reading a file out of the page cache the way the scanner does
 * (pread into one reused direct buffer per thread), with no statistics and no checksum. Args:
 * file threads [readBytes, default the scanner's]. -Daligned=false reads into a plain
 * {@code allocateDirect} buffer instead of the scanner's page-aligned one. Prints GB/s for 4 passes.
 */
public final class ReadBench {
    public static void main(String[] args) throws Exception {
        Path file = Path.of(args[0]);
        int threads = Integer.parseInt(args[1]);
        int piece = args.length > 2 ? Integer.parseInt(args[2]) : TensorScanner.READ_BYTES;
        long size = Files.size(file);
        long share = (size + threads - 1) / threads;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        for (int pass = 0; pass < 4; pass++) {
            long t0 = System.nanoTime();
            List<Future<?>> parts = new ArrayList<>();
            for (int i = 0; i < threads; i++) {
                long from = i * share;
                long to = Math.min(size, from + share);
                parts.add(pool.submit(() -> read(file, from, to, piece)));
            }
            for (Future<?> f : parts) {
                f.get();
            }
            System.out.printf("read threads=%d piece=%d pass=%d %.2f GB/s%n", threads, piece, pass,
                    size / ((System.nanoTime() - t0) / 1e9) / 1e9);
        }
        pool.shutdown();
    }

    private static Void read(Path file, long from, long to, int piece) throws Exception {
        ByteBuffer b = "false".equals(System.getProperty("aligned")) ? ByteBuffer.allocateDirect(piece)
                : ReadBuffer.allocate(piece);
        try (FileChannel ch = FileChannel.open(file)) {
            for (long pos = from; pos < to; pos += piece) {
                b.clear().limit((int) Math.min(piece, to - pos));
                while (b.hasRemaining() && ch.read(b, pos + b.position()) > 0) {
                    // a short read continues where it stopped
                }
            }
        }
        return null;
    }
}
