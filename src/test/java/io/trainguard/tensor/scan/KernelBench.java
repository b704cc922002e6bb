package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.TensorDType;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Random;

/**
 * Kernel-only speed, one thread, on a buffer already in memory (no file reads): separates compute
 * from I/O. Args: dtypes (F32, BF16). -Dbytes=N sets the buffer size (default 64 MiB, i.e. from
 * DRAM; 32768 keeps it in L1/L2 and scans it over and over); -Dsimd=false for the scalar kernels.
 */
public final class KernelBench {
    public static void main(String[] args) {
        int n = Integer.getInteger("bytes", 64 << 20);
        long perRound = Math.max(n, 1L << 30); // small buffers are scanned repeatedly, 1 GiB a round
        boolean simd = !"false".equals(System.getProperty("simd"));
        ByteBuffer b = ByteBuffer.allocateDirect(n).order(ByteOrder.LITTLE_ENDIAN);
        for (String name : (args.length > 0 ? args : new String[] {"F32", "BF16"})) {
            TensorDType t = TensorDType.valueOf(name);
            Random r = new Random(1);
            for (int i = 0; i < n; i += 4) {
                float v = (float) r.nextGaussian() * 0.02f;
                if (t == TensorDType.BF16) { // two bf16 values, not a float's low half read as one
                    b.putInt(i, Float.floatToRawIntBits(v) & 0xFFFF0000 | Float.floatToRawIntBits(-v) >>> 16);
                } else {
                    b.putFloat(i, v);
                }
            }
            for (Checksum checksum : Checksum.values()) {
                ScanOptions o = new ScanOptions(checksum, true, simd);
                double best = 0;
                for (int round = 0; round < 20; round++) {
                    long t0 = System.nanoTime();
                    for (long done = 0; done < perRound; done += n) {
                        ScanKernels.scan(b, 0, n, t, new ScanAccumulator(), o);
                    }
                    best = Math.max(best, perRound / ((System.nanoTime() - t0) / 1e9) / 1e9);
                }
                System.out.printf("kernel %s bytes=%d checksum=%s simd=%s best=%.2f GB/s%n", t, n, checksum,
                        simd && ScanKernels.SIMD_AVAILABLE, best);
            }
        }
    }
}
