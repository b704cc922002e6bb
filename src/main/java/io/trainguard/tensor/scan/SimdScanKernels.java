package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.Elements;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.LongVector;
import jdk.incubator.vector.ShortVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * The float kernels of {@link ScanKernels} with the Vector API (256-bit: 8 floats per instruction),
 * which makes the full scan — finite check, max|x|, sum of squares — memory-bound instead of
 * compute-bound. max|x| is an integer max over the sign-cleared bits (IEEE order of non-negative
 * floats is the order of their bits), which also answers the finite check for free: a block holds
 * a NaN/Inf iff its largest magnitude has all exponent bits set. Squares are summed in float vector
 * lanes, then in double across blocks. The fp32/bf16/fp16 kernels also feed the raw words into
 * the 32 lanes of the content hash ({@link ContentHash}) in the same loop — four 8-int vectors are
 * one row — which is what makes that checksum nearly free next to a CRC32C pass.
 *
 * <p>Only loaded when the JVM runs with {@code --add-modules jdk.incubator.vector}
 * ({@link ScanKernels#SIMD_AVAILABLE}); without it the scalar kernels run. Each method scans the
 * longest prefix of the block that fills whole vector steps and returns its length, or -1 when
 * that prefix holds a NaN/Inf — then no statistic was accumulated (the hash lanes were fed all the
 * same) and the caller rescans the block element by element for exact counts and the first index.
 */
final class SimdScanKernels {
    private SimdScanKernels() {
    }

    /*
     * 256 bits on every machine: four int vectors are then exactly one row of the content hash's
     * 32 lanes. Machines whose widest vectors are narrower take the scalar kernels (supported()).
     */
    private static final VectorSpecies<Integer> I = IntVector.SPECIES_256;
    private static final VectorSpecies<Float> F = FloatVector.SPECIES_256;
    private static final VectorSpecies<Short> S = ShortVector.SPECIES_256;
    private static final VectorSpecies<Long> L = LongVector.SPECIES_256;
    private static final VectorSpecies<Double> D = DoubleVector.SPECIES_256;
    private static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;
    private static final int V = I.vectorByteSize();
    /**
     * Four vectors per iteration: independent add chains hide the FMA latency, less loop overhead.
     * The kernels are written out, with helpers only as small as {@link #mix}: a helper method that
     * C2 does not inline turns every vector into a heap object (the bf16 kernel ran at a quarter of
     * its speed that way), which is also why the bf16 and fp16 kernels are near-copies.
     */
    private static final int STEP4 = 4 * V;
    /** Bytes of one row of the content hash: what the fused kernels consume per iteration. */
    static final int ROW_BYTES = STEP4;
    private static final int STEP = 2 * V;
    /** 2^(127-15): turns fp16 bits shifted into float position into the fp16 value, subnormals included. */
    private static final float F16_SCALE = 0x1p112f;

    static int bits() {
        return I.vectorBitSize();
    }

    /** The CPU runs 256-bit vectors natively (AVX2, AVX-512, SVE-256); otherwise they would be emulated. */
    static boolean supported() {
        return IntVector.SPECIES_PREFERRED.vectorBitSize() >= 256;
    }

    /**
     * One step of the content hash on eight lanes, {@code h = (h ^ (h >>> 15) ^ w) * P32}. Small
     * enough that C2 always inlines it (a helper it does not inline boxes its vectors).
     */
    private static IntVector mix(IntVector h, IntVector w) {
        return h.lanewise(VectorOperators.LSHR, 15).lanewise(VectorOperators.XOR, h).lanewise(VectorOperators.XOR, w)
                .mul(ContentHash.P32);
    }

    /**
     * Content hash only ({@link ContentHash}), for dtypes without a fused kernel: feeds the whole
     * rows of the block at {@code p} into {@code lanes} and returns how many bytes that was.
     */
    static int hash(ByteBuffer b, int p, int n, int[] lanes) {
        int len = n - n % STEP4;
        IntVector h0 = IntVector.fromArray(I, lanes, 0);
        IntVector h1 = IntVector.fromArray(I, lanes, 8);
        IntVector h2 = IntVector.fromArray(I, lanes, 16);
        IntVector h3 = IntVector.fromArray(I, lanes, 24);
        for (int q = p, end = p + len; q < end; q += STEP4) {
            IntVector x = IntVector.fromByteBuffer(I, b, q, LE);
            IntVector y = IntVector.fromByteBuffer(I, b, q + V, LE);
            IntVector z = IntVector.fromByteBuffer(I, b, q + 2 * V, LE);
            IntVector w = IntVector.fromByteBuffer(I, b, q + 3 * V, LE);
            h0 = mix(h0, x);
            h1 = mix(h1, y);
            h2 = mix(h2, z);
            h3 = mix(h3, w);
        }
        h0.intoArray(lanes, 0);
        h1.intoArray(lanes, 8);
        h2.intoArray(lanes, 16);
        h3.intoArray(lanes, 24);
        return len;
    }

    /** fp32: the largest magnitude bits decide at once whether any lane is NaN/Inf. */
    static int f32(ByteBuffer b, int p, int n, ScanAccumulator a, int[] lanes) {
        int len = n - n % STEP4;
        IntVector h0 = IntVector.fromArray(I, lanes, 0);
        IntVector h1 = IntVector.fromArray(I, lanes, 8);
        IntVector h2 = IntVector.fromArray(I, lanes, 16);
        IntVector h3 = IntVector.fromArray(I, lanes, 24);
        IntVector m0 = IntVector.zero(I);
        IntVector m1 = IntVector.zero(I);
        FloatVector s0 = FloatVector.zero(F);
        FloatVector s1 = FloatVector.zero(F);
        FloatVector s2 = FloatVector.zero(F);
        FloatVector s3 = FloatVector.zero(F);
        for (int q = p, end = p + len; q < end; q += STEP4) {
            IntVector rx = IntVector.fromByteBuffer(I, b, q, LE);
            IntVector ry = IntVector.fromByteBuffer(I, b, q + V, LE);
            IntVector rz = IntVector.fromByteBuffer(I, b, q + 2 * V, LE);
            IntVector rw = IntVector.fromByteBuffer(I, b, q + 3 * V, LE);
            h0 = mix(h0, rx);
            h1 = mix(h1, ry);
            h2 = mix(h2, rz);
            h3 = mix(h3, rw);
            IntVector x = rx.and(0x7FFFFFFF);
            IntVector y = ry.and(0x7FFFFFFF);
            IntVector z = rz.and(0x7FFFFFFF);
            IntVector w = rw.and(0x7FFFFFFF);
            m0 = m0.max(x).max(z);
            m1 = m1.max(y).max(w);
            FloatVector fx = x.reinterpretAsFloats();
            FloatVector fy = y.reinterpretAsFloats();
            FloatVector fz = z.reinterpretAsFloats();
            FloatVector fw = w.reinterpretAsFloats();
            s0 = fx.fma(fx, s0);
            s1 = fy.fma(fy, s1);
            s2 = fz.fma(fz, s2);
            s3 = fw.fma(fw, s3);
        }
        h0.intoArray(lanes, 0);
        h1.intoArray(lanes, 8);
        h2.intoArray(lanes, 16);
        h3.intoArray(lanes, 24);
        int max = m0.max(m1).reduceLanes(VectorOperators.MAX);
        if (max >= 0x7F800000) {
            return -1;
        }
        a.elements += len >>> 2;
        a.maxAbs = Math.max(a.maxAbs, Float.intBitsToFloat(max));
        a.sumSquares += s0.add(s1).add(s2.add(s3)).reduceLanes(VectorOperators.ADD);
        return len;
    }

    /**
     * bf16: the magnitudes are compared as 16-bit lanes (one max per vector, and the largest
     * decides NaN/Inf); for the squares each int lane's two values become floats by moving each
     * into the top half.
     */
    static int bf16(ByteBuffer b, int p, int n, ScanAccumulator a, int[] lanes) {
        int len = n - n % STEP4;
        IntVector h0 = IntVector.fromArray(I, lanes, 0);
        IntVector h1 = IntVector.fromArray(I, lanes, 8);
        IntVector h2 = IntVector.fromArray(I, lanes, 16);
        IntVector h3 = IntVector.fromArray(I, lanes, 24);
        ShortVector m0 = ShortVector.zero(S);
        ShortVector m1 = ShortVector.zero(S);
        FloatVector s0 = FloatVector.zero(F);
        FloatVector s1 = FloatVector.zero(F);
        FloatVector s2 = FloatVector.zero(F);
        FloatVector s3 = FloatVector.zero(F);
        for (int q = p, end = p + len; q < end; q += STEP4) {
            IntVector x = IntVector.fromByteBuffer(I, b, q, LE);
            IntVector y = IntVector.fromByteBuffer(I, b, q + V, LE);
            IntVector z = IntVector.fromByteBuffer(I, b, q + 2 * V, LE);
            IntVector w = IntVector.fromByteBuffer(I, b, q + 3 * V, LE);
            h0 = mix(h0, x);
            h1 = mix(h1, y);
            h2 = mix(h2, z);
            h3 = mix(h3, w);
            m0 = m0.max(x.and(0x7FFF7FFF).reinterpretAsShorts()).max(z.and(0x7FFF7FFF).reinterpretAsShorts());
            m1 = m1.max(y.and(0x7FFF7FFF).reinterpretAsShorts()).max(w.and(0x7FFF7FFF).reinterpretAsShorts());
            FloatVector x0 = x.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
            FloatVector x1 = x.and(0xFFFF0000).reinterpretAsFloats();
            FloatVector y0 = y.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
            FloatVector y1 = y.and(0xFFFF0000).reinterpretAsFloats();
            FloatVector z0 = z.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
            FloatVector z1 = z.and(0xFFFF0000).reinterpretAsFloats();
            FloatVector w0 = w.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
            FloatVector w1 = w.and(0xFFFF0000).reinterpretAsFloats();
            s0 = z0.fma(z0, x0.fma(x0, s0));
            s1 = z1.fma(z1, x1.fma(x1, s1));
            s2 = w0.fma(w0, y0.fma(y0, s2));
            s3 = w1.fma(w1, y1.fma(y1, s3));
        }
        h0.intoArray(lanes, 0);
        h1.intoArray(lanes, 8);
        h2.intoArray(lanes, 16);
        h3.intoArray(lanes, 24);
        int max = m0.max(m1).reduceLanes(VectorOperators.MAX);
        if (max >= 0x7F80) {
            return -1;
        }
        a.elements += len >>> 1;
        a.maxAbs = Math.max(a.maxAbs, Float.intBitsToFloat(max << 16));
        a.sumSquares += s0.add(s1).add(s2.add(s3)).reduceLanes(VectorOperators.ADD);
        return len;
    }

    /**
     * fp16: magnitudes compared as 16-bit lanes as for bf16; exponent and mantissa shifted into
     * float position and scaled by 2^112 give the exact value of normal and subnormal halves alike.
     */
    static int f16(ByteBuffer b, int p, int n, ScanAccumulator a, int[] lanes) {
        int len = n - n % STEP4;
        IntVector h0 = IntVector.fromArray(I, lanes, 0);
        IntVector h1 = IntVector.fromArray(I, lanes, 8);
        IntVector h2 = IntVector.fromArray(I, lanes, 16);
        IntVector h3 = IntVector.fromArray(I, lanes, 24);
        ShortVector m0 = ShortVector.zero(S);
        ShortVector m1 = ShortVector.zero(S);
        FloatVector s0 = FloatVector.zero(F);
        FloatVector s1 = FloatVector.zero(F);
        FloatVector s2 = FloatVector.zero(F);
        FloatVector s3 = FloatVector.zero(F);
        for (int q = p, end = p + len; q < end; q += STEP4) {
            IntVector rx = IntVector.fromByteBuffer(I, b, q, LE);
            IntVector ry = IntVector.fromByteBuffer(I, b, q + V, LE);
            IntVector rz = IntVector.fromByteBuffer(I, b, q + 2 * V, LE);
            IntVector rw = IntVector.fromByteBuffer(I, b, q + 3 * V, LE);
            h0 = mix(h0, rx);
            h1 = mix(h1, ry);
            h2 = mix(h2, rz);
            h3 = mix(h3, rw);
            IntVector x = rx.and(0x7FFF7FFF);
            IntVector y = ry.and(0x7FFF7FFF);
            IntVector z = rz.and(0x7FFF7FFF);
            IntVector w = rw.and(0x7FFF7FFF);
            m0 = m0.max(x.reinterpretAsShorts()).max(z.reinterpretAsShorts());
            m1 = m1.max(y.reinterpretAsShorts()).max(w.reinterpretAsShorts());
            FloatVector x0 = x.and(0x7FFF).lanewise(VectorOperators.LSHL, 13).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector x1 = x.lanewise(VectorOperators.LSHR, 3).and(0x0FFFE000).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector y0 = y.and(0x7FFF).lanewise(VectorOperators.LSHL, 13).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector y1 = y.lanewise(VectorOperators.LSHR, 3).and(0x0FFFE000).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector z0 = z.and(0x7FFF).lanewise(VectorOperators.LSHL, 13).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector z1 = z.lanewise(VectorOperators.LSHR, 3).and(0x0FFFE000).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector w0 = w.and(0x7FFF).lanewise(VectorOperators.LSHL, 13).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector w1 = w.lanewise(VectorOperators.LSHR, 3).and(0x0FFFE000).reinterpretAsFloats().mul(F16_SCALE);
            s0 = z0.fma(z0, x0.fma(x0, s0));
            s1 = z1.fma(z1, x1.fma(x1, s1));
            s2 = w0.fma(w0, y0.fma(y0, s2));
            s3 = w1.fma(w1, y1.fma(y1, s3));
        }
        h0.intoArray(lanes, 0);
        h1.intoArray(lanes, 8);
        h2.intoArray(lanes, 16);
        h3.intoArray(lanes, 24);
        int max = m0.max(m1).reduceLanes(VectorOperators.MAX);
        if (max >= 0x7C00) {
            return -1;
        }
        a.elements += len >>> 1;
        a.maxAbs = Math.max(a.maxAbs, Elements.F16[max]);
        a.sumSquares += s0.add(s1).add(s2.add(s3)).reduceLanes(VectorOperators.ADD);
        return len;
    }

    static int f64(ByteBuffer b, int p, int n, ScanAccumulator a) {
        int len = n - n % STEP;
        LongVector flags = LongVector.zero(L);
        DoubleVector m0 = DoubleVector.zero(D);
        DoubleVector s0 = DoubleVector.zero(D);
        DoubleVector s1 = DoubleVector.zero(D);
        int half = STEP / 2;
        for (int q = p, end = p + len; q < end; q += STEP) {
            LongVector x = LongVector.fromByteBuffer(L, b, q, LE).and(0x7FFFFFFFFFFFFFFFL);
            LongVector y = LongVector.fromByteBuffer(L, b, q + half, LE).and(0x7FFFFFFFFFFFFFFFL);
            flags = flags.or(x.add(0x0010000000000000L)).or(y.add(0x0010000000000000L));
            DoubleVector dx = x.reinterpretAsDoubles();
            DoubleVector dy = y.reinterpretAsDoubles();
            m0 = m0.max(dx).max(dy);
            s0 = dx.fma(dx, s0);
            s1 = dy.fma(dy, s1);
        }
        if (flags.reduceLanes(VectorOperators.OR) < 0) {
            return -1;
        }
        a.elements += len >>> 3;
        a.maxAbs = Math.max(a.maxAbs, m0.reduceLanes(VectorOperators.MAX));
        a.sumSquares += s0.add(s1).reduceLanes(VectorOperators.ADD);
        return len;
    }
}
