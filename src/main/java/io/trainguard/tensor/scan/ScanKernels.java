package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.Elements;
import io.trainguard.tensor.format.TensorDType;
import java.nio.ByteBuffer;
import java.util.zip.CRC32C;

/**
 * The hot loops. Floats are read as raw longs (several lanes per load) and tested with integer
 * arithmetic: a lane is non-finite iff its exponent bits are all ones, and
 * {@code (bits & EXP) + EXP_LSB} carries into the lane's top bit exactly then. One OR per load
 * accumulates the verdict of a block; only a block that contains a NaN/Inf is rescanned element by
 * element, so clean data pays three integer ops per 8 bytes for the check. max|x| uses a compare
 * that is almost never taken once a block's maximum is found (cheaper than Math.max). The sum of
 * squares runs in four float partial sums per 32 KiB block (so the adds pipeline; float because
 * the double conversion halved the speed) and is added up across blocks in double: relative
 * error of the norm is bounded by ~1e-4 and typically ~1e-6, ample for a health statistic.
 *
 * <p>These scalar loops are compute-bound at ~2-3 GB/s per core once max|x| and the norm are
 * wanted; {@link SimdScanKernels} does the same for fp32/bf16/fp16/fp64 with the Vector API at
 * memory speed and is used whenever the JVM has {@code jdk.incubator.vector}. The scalar loops
 * remain for JVMs without it (a native image), fp8, integers, block tails and NaN/Inf blocks.
 */
final class ScanKernels {
    private ScanKernels() {
    }

    /**
     * Bytes per block: small enough to stay in L1/L2 for the CRC that follows the scan; the
     * content hash's block, so a tg1 block is always scanned in one piece.
     */
    static final int BLOCK = ContentHash.BLOCK;

    private static final long F32_EXP = 0x7F8000007F800000L;
    private static final long F32_LSB = 0x0080000000800000L;
    private static final long F32_TOP = 0x8000000080000000L;
    private static final long H_EXP_BF16 = 0x7F807F807F807F80L;
    private static final long H_LSB_BF16 = 0x0080008000800080L;
    private static final long H_EXP_F16 = 0x7C007C007C007C00L;
    private static final long H_LSB_F16 = 0x0400040004000400L;
    private static final long H_TOP = 0x8000800080008000L;
    private static final long B_EXP_E4M3 = 0x7F7F7F7F7F7F7F7FL; // NaN = S.1111.111
    private static final long B_LSB = 0x0101010101010101L;
    private static final long B_EXP_E5M2 = 0x7C7C7C7C7C7C7C7CL;
    private static final long B_LSB_E5M2 = 0x0404040404040404L;
    private static final long B_TOP = 0x8080808080808080L;

    /**
     * Whether the Vector API kernels ({@link SimdScanKernels}) can run: the JVM was started with
     * {@code --add-modules jdk.incubator.vector} and compiles with C2. Checked without touching a
     * vector class, so the scalar kernels work on a JVM without the module.
     */
    static final boolean SIMD_AVAILABLE = ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()
            && optimizingJit() && SimdScanKernels.supported();

    /**
     * The Vector API is fast only once C2 compiles it; under C1 alone (-XX:TieredStopAtLevel=1,
     * common to cut start time) or the interpreter every vector is an object and the scan runs
     * some hundred times slower than the scalar kernels.
     */
    private static boolean optimizingJit() {
        try {
            var vm = java.lang.management.ManagementFactory.getPlatformMXBean(
                    com.sun.management.HotSpotDiagnosticMXBean.class);
            return Integer.parseInt(vm.getVMOption("TieredStopAtLevel").getValue()) >= 4
                    && !System.getProperty("java.vm.info", "").contains("interpreted");
        } catch (RuntimeException | LinkageError e) {
            return false; // not HotSpot: take the scalar kernels that work everywhere
        }
    }

    /**
     * Scans {@code len} bytes at {@code off} of {@code b} (little-endian), which hold whole
     * elements of {@code t}, into {@code a}, with the checksum {@code o.checksum()} asks for.
     */
    static void scan(ByteBuffer b, int off, int len, TensorDType t, ScanAccumulator a, ScanOptions o) {
        CRC32C c = o.checksum() == Checksum.CRC32C ? new CRC32C() : null;
        scanInto(b, off, len, t, a, o, c);
        if (c != null) {
            a.setCrc((int) c.getValue(), len);
        }
    }

    /**
     * As {@link #scan}, for a piece read in several buffers: the statistics and the tg1 blocks add
     * up in {@code a} (element indices continue; every buffer but the piece's last must be a whole
     * number of {@link #BLOCK}s), the bytes go into the running {@code crc} (null: none), which the
     * caller stores in {@code a} after the last buffer.
     */
    static void scanInto(ByteBuffer b, int off, int len, TensorDType t, ScanAccumulator a, ScanOptions o,
            CRC32C crc) {
        if (!o.stats()) {
            a.statsSkipped = true;
        }
        boolean simd = o.simd() && SIMD_AVAILABLE;
        boolean hash = o.checksum() == Checksum.TG1;
        // The fused kernels feed the hash lanes whether or not the hash is wanted (a branch in
        // their loop would cost more than the hash); without it they feed a scratch state.
        int[] lanes = a.hashLanes();
        ByteBuffer view = crc != null ? b.duplicate() : null;
        int end = off + len;
        for (int p = off; p < end; p += BLOCK) {
            int n = Math.min(BLOCK, end - p);
            long base = a.elements;
            if (hash) {
                ContentHash.seed(lanes);
            }
            int hashed = 0;
            if (!o.stats() && t.isFloating()) {
                finiteOnly(b, p, n, t, a);
            } else if (simd && t.isFloating() && t.byteSize() > 1) {
                hashed = simdThenScalar(b, p, n, t, a, lanes);
            } else {
                scalar(b, p, n, t, a);
            }
            assert a.elements == base + n / t.byteSize();
            if (hash) {
                if (simd && hashed == 0) {
                    hashed = SimdScanKernels.hash(b, p, n, lanes);
                }
                ContentHash.feed(b, p + hashed, n - hashed, lanes);
                a.appendHashBlock(ContentHash.blockValue(lanes, n), n);
            }
            if (crc != null) {
                view.limit(p + n).position(p);
                crc.update(view);
            }
        }
    }

    /**
     * Runs the vector kernel, rescans what it could not take; returns the bytes it fed into the
     * hash lanes (fp32/bf16/fp16 do it in the same loop; fp64 checkpoints are rare enough that
     * they hash in a second pass).
     */
    private static int simdThenScalar(ByteBuffer b, int p, int n, TensorDType t, ScanAccumulator a, int[] lanes) {
        int done = switch (t) {
            case F32 -> SimdScanKernels.f32(b, p, n, a, lanes);
            case BF16 -> SimdScanKernels.bf16(b, p, n, a, lanes);
            case F16 -> SimdScanKernels.f16(b, p, n, a, lanes);
            case F64 -> SimdScanKernels.f64(b, p, n, a);
            default -> throw new IllegalArgumentException("no vector kernel for " + t);
        };
        int hashed = t == TensorDType.F64 ? 0 : n - n % SimdScanKernels.ROW_BYTES;
        if (done < 0) {
            slow(b, p, n, t, a);
        } else if (done < n) {
            scalar(b, p + done, n - done, t, a);
        }
        return hashed;
    }

    private static void scalar(ByteBuffer b, int p, int n, TensorDType t, ScanAccumulator a) {
        switch (t) {
            case F32: f32(b, p, n, a); break;
            case BF16, F16: halves(b, p, n, a, t); break;
            case F64: f64(b, p, n, a); break;
            case F8_E4M3: bytes(b, p, n, a, B_EXP_E4M3, B_LSB, Elements.F8_E4M3_VALUES); break;
            case F8_E5M2: bytes(b, p, n, a, B_EXP_E5M2, B_LSB_E5M2, Elements.F8_E5M2_VALUES); break;
            default: integers(b, p, n, t, a);
        }
    }

    private static void f32(ByteBuffer b, int p, int n, ScanAccumulator a) {
        int end = p + n;
        int end16 = p + (n & ~15);
        long flags = 0;
        float m = 0;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int q = p;
        for (; q < end16; q += 16) {
            long x = b.getLong(q);
            long y = b.getLong(q + 8);
            flags |= ((x & F32_EXP) + F32_LSB) | ((y & F32_EXP) + F32_LSB);
            float d0 = Math.abs(Float.intBitsToFloat((int) x));
            float d1 = Math.abs(Float.intBitsToFloat((int) (x >>> 32)));
            float d2 = Math.abs(Float.intBitsToFloat((int) y));
            float d3 = Math.abs(Float.intBitsToFloat((int) (y >>> 32)));
            s0 += d0 * d0;
            s1 += d1 * d1;
            s2 += d2 * d2;
            s3 += d3 * d3;
            // rarely taken once the block's max is found: a predicted branch is cheaper than max()
            if (d0 > m) m = d0;
            if (d1 > m) m = d1;
            if (d2 > m) m = d2;
            if (d3 > m) m = d3;
        }
        for (; q < end; q += 4) {
            int x = b.getInt(q);
            flags |= ((x & 0x7F800000L) + 0x00800000L);
            float d = Math.abs(Float.intBitsToFloat(x));
            s0 += d * d;
            if (d > m) m = d;
        }
        if ((flags & F32_TOP) != 0) {
            slow(b, p, n, TensorDType.F32, a);
            return;
        }
        a.elements += n >>> 2;
        a.maxAbs = Math.max(a.maxAbs, m);
        a.sumSquares += ((double) s0 + s1) + ((double) s2 + s3);
    }

    /**
     * bf16 and fp16 alike: each 16-bit lane is decoded by a table of its 32768 magnitudes, and
     * max|x| is taken on the magnitude bits, whose order is the order of the values.
     */
    private static void halves(ByteBuffer b, int p, int n, ScanAccumulator a, TensorDType t) {
        boolean bf16 = t == TensorDType.BF16;
        long exp = bf16 ? H_EXP_BF16 : H_EXP_F16;
        long lsb = bf16 ? H_LSB_BF16 : H_LSB_F16;
        float[] values = bf16 ? Elements.BF16_MAGNITUDES : Elements.F16;
        int end = p + n;
        int end8 = p + (n & ~7);
        long flags = 0;
        int mx = 0;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int q = p;
        for (; q < end8; q += 8) {
            long x = b.getLong(q);
            flags |= (x & exp) + lsb;
            int h0 = (int) x & 0x7FFF;
            int h1 = (int) (x >>> 16) & 0x7FFF;
            int h2 = (int) (x >>> 32) & 0x7FFF;
            int h3 = (int) (x >>> 48) & 0x7FFF;
            float d0 = values[h0];
            float d1 = values[h1];
            float d2 = values[h2];
            float d3 = values[h3];
            s0 += d0 * d0;
            s1 += d1 * d1;
            s2 += d2 * d2;
            s3 += d3 * d3;
            if (h0 > mx) mx = h0;
            if (h1 > mx) mx = h1;
            if (h2 > mx) mx = h2;
            if (h3 > mx) mx = h3;
        }
        for (; q < end; q += 2) {
            int h = b.getShort(q) & 0x7FFF;
            flags |= (h & exp) + lsb;
            float d = values[h];
            s0 += d * d;
            if (h > mx) mx = h;
        }
        if ((flags & H_TOP) != 0) {
            slow(b, p, n, t, a);
            return;
        }
        a.elements += n >>> 1;
        a.maxAbs = Math.max(a.maxAbs, values[mx]);
        a.sumSquares += ((double) s0 + s1) + ((double) s2 + s3);
    }

    private static void finiteOnly(ByteBuffer b, int p, int n, TensorDType t, ScanAccumulator a) {
        long exp, lsb, top;
        switch (t) {
            case F32: exp = F32_EXP; lsb = F32_LSB; top = F32_TOP; break;
            case BF16: exp = H_EXP_BF16; lsb = H_LSB_BF16; top = H_TOP; break;
            case F16: exp = H_EXP_F16; lsb = H_LSB_F16; top = H_TOP; break;
            case F64: exp = 0x7FF0000000000000L; lsb = 0x0010000000000000L; top = Long.MIN_VALUE; break;
            case F8_E4M3: exp = B_EXP_E4M3; lsb = B_LSB; top = B_TOP; break;
            default: exp = B_EXP_E5M2; lsb = B_LSB_E5M2; top = B_TOP; break;
        }
        int end = p + n;
        int end8 = p + (n & ~7);
        long flags = 0;
        int q = p;
        for (; q < end8; q += 8) {
            flags |= (b.getLong(q) & exp) + lsb;
        }
        if (q < end || (flags & top) != 0) {
            // a tail shorter than 8 bytes, or a block with NaN/Inf: exact element-wise path
            if ((flags & top) != 0) {
                slow(b, p, n, t, a);
                return;
            }
            ScanAccumulator tail = new ScanAccumulator();
            slow(b, q, end - q, t, tail);
            if (tail.nonFinite() > 0) {
                slow(b, p, n, t, a);
                return;
            }
        }
        a.elements += n / t.byteSize();
    }

    private static void f64(ByteBuffer b, int p, int n, ScanAccumulator a) {
        int end = p + n;
        long flags = 0;
        long mx = 0;
        double s0 = 0, s1 = 0;
        int q = p;
        for (; q + 16 <= end; q += 16) {
            long x = b.getLong(q) & 0x7FFFFFFFFFFFFFFFL;
            long y = b.getLong(q + 8) & 0x7FFFFFFFFFFFFFFFL;
            flags |= (x + 0x0010000000000000L) | (y + 0x0010000000000000L);
            mx = Math.max(mx, Math.max(x, y));
            double d0 = Double.longBitsToDouble(x);
            double d1 = Double.longBitsToDouble(y);
            s0 += d0 * d0;
            s1 += d1 * d1;
        }
        for (; q < end; q += 8) {
            long x = b.getLong(q) & 0x7FFFFFFFFFFFFFFFL;
            flags |= x + 0x0010000000000000L;
            mx = Math.max(mx, x);
            double d = Double.longBitsToDouble(x);
            s0 += d * d;
        }
        // |x| + smallest exponent step overflows into the sign bit iff the exponent is all ones
        if (flags < 0) {
            slow(b, p, n, TensorDType.F64, a);
            return;
        }
        a.elements += n >>> 3;
        a.maxAbs = Math.max(a.maxAbs, Double.longBitsToDouble(mx));
        a.sumSquares += s0 + s1;
    }

    private static void bytes(ByteBuffer b, int p, int n, ScanAccumulator a, long exp, long lsb, float[] values) {
        int end = p + n;
        long flags = 0;
        int q = p;
        for (; q + 8 <= end; q += 8) {
            flags |= (b.getLong(q) & exp) + lsb;
        }
        for (; q < end; q++) {
            flags |= (b.get(q) & exp & 0xFF) + (lsb & 0xFF);
        }
        if ((flags & B_TOP) != 0) {
            slow(b, p, n, exp == B_EXP_E4M3 ? TensorDType.F8_E4M3 : TensorDType.F8_E5M2, a);
            return;
        }
        double s = 0;
        double mx = 0;
        for (q = p; q < end; q++) {
            double d = values[b.get(q) & 0x7F];
            mx = Math.max(mx, d);
            s += d * d;
        }
        a.elements += n;
        a.maxAbs = Math.max(a.maxAbs, mx);
        a.sumSquares += s;
    }

    private static void integers(ByteBuffer b, int p, int n, TensorDType t, ScanAccumulator a) {
        int size = t.byteSize();
        long count = n / size;
        double s = 0;
        double mx = a.maxAbs;
        for (long i = 0; i < count; i++) {
            double v = Math.abs(Elements.get(b, p, i, t));
            mx = Math.max(mx, v);
            s += v * v;
        }
        a.elements += count;
        a.maxAbs = mx;
        a.sumSquares += s;
    }

    /** Element-by-element path for blocks that hold a NaN or Inf. */
    private static void slow(ByteBuffer b, int p, int n, TensorDType t, ScanAccumulator a) {
        long count = n / t.byteSize();
        double s = 0;
        double mx = a.maxAbs;
        for (long i = 0; i < count; i++) {
            double v = Elements.get(b, p, i, t);
            if (Double.isNaN(v)) {
                a.nanCount++;
            } else if (Double.isInfinite(v)) {
                a.infCount++;
            } else {
                double abs = Math.abs(v);
                mx = Math.max(mx, abs);
                s += v * v;
                continue;
            }
            if (a.firstNonFinite < 0) {
                a.firstNonFinite = a.elements + i;
            }
        }
        a.elements += count;
        a.maxAbs = mx;
        a.sumSquares += s;
    }
}
