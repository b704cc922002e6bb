package io.trainguard.tensor;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Random;

/**
 * Kernel-only speed on a 64 MiB buffer already in memory (no file reads): separates compute from
 * I/O. Args: dtypes (F32, BF16); -Dsimd=false for the scalar kernels.
 */
public final class KernelBench {
    public static void main(String[] args) {
        int n = 64 << 20;
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
            for (Checksum crc : Checksum.values()) {
                double best = 0;
                for (int round = 0; round < 40; round++) {
                    ScanAccumulator a = new ScanAccumulator();
                    long t0 = System.nanoTime();
                    ScanKernels.scan(b, 0, n, t, a, new ScanOptions(crc, true, !"false".equals(System.getProperty("simd"))));
                    long dt = System.nanoTime() - t0;
                    best = Math.max(best, n / (dt / 1e9) / 1e9);
                    if (round == 14) System.out.println("nonfinite=" + a.nonFinite() + " max=" + a.maxAbs + " norm=" + Math.sqrt(a.sumSquares));
                }
                System.out.printf("kernel %s checksum=%s best=%.2f GB/s%n", t, crc, best);
            }
        }
    }
}
