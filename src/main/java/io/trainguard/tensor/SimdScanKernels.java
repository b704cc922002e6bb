package io.trainguard.tensor;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.LongVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * The float kernels of {@link ScanKernels} with the Vector API (AVX2: 8 floats per instruction),
 * which makes the full scan — finite check, max|x|, sum of squares — memory-bound instead of
 * compute-bound. Same tests as the scalar kernels: a lane is non-finite iff
 * {@code (bits & EXP) + EXP_LSB} carries into its top bit; max|x| is an integer max over the
 * sign-cleared bits (IEEE order of non-negative floats is the order of their bits); squares are
 * summed in float vector lanes, then in double across blocks.
 *
 * <p>Only loaded when the JVM runs with {@code --add-modules jdk.incubator.vector}
 * ({@link ScanKernels#SIMD_AVAILABLE}); without it the scalar kernels run. Each method scans the
 * longest prefix of the block that fills whole vector steps and returns its length, or -1 when
 * that prefix holds a NaN/Inf — then nothing was accumulated and the caller rescans the block
 * element by element for exact counts and the first index.
 */
final class SimdScanKernels {
    private SimdScanKernels() {
    }

    private static final VectorSpecies<Integer> I = IntVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Long> L = LongVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Double> D = DoubleVector.SPECIES_PREFERRED;
    private static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;
    /** Two vectors per iteration: two independent add chains hide the FMA latency. */
    private static final int STEP = 2 * I.vectorByteSize();
    /** 2^(127-15): turns fp16 bits shifted into float position into the fp16 value, subnormals included. */
    private static final float F16_SCALE = 0x1p112f;

    static int bits() {
        return I.vectorBitSize();
    }

    static int f32(ByteBuffer b, int p, int n, ScanAccumulator a) {
        int len = n - n % STEP;
        IntVector flags = IntVector.zero(I);
        IntVector m0 = IntVector.zero(I);
        IntVector m1 = IntVector.zero(I);
        FloatVector s0 = FloatVector.zero(F);
        FloatVector s1 = FloatVector.zero(F);
        int half = STEP / 2;
        for (int q = p, end = p + len; q < end; q += STEP) {
            IntVector x = IntVector.fromByteBuffer(I, b, q, LE).and(0x7FFFFFFF);
            IntVector y = IntVector.fromByteBuffer(I, b, q + half, LE).and(0x7FFFFFFF);
            flags = flags.or(x.add(0x00800000)).or(y.add(0x00800000));
            m0 = m0.max(x);
            m1 = m1.max(y);
            FloatVector fx = x.reinterpretAsFloats();
            FloatVector fy = y.reinterpretAsFloats();
            s0 = fx.fma(fx, s0);
            s1 = fy.fma(fy, s1);
        }
        if (flags.reduceLanes(VectorOperators.OR) < 0) {
            return -1;
        }
        a.elements += len >>> 2;
        a.maxAbs = Math.max(a.maxAbs, Float.intBitsToFloat(m0.max(m1).reduceLanes(VectorOperators.MAX)));
        a.sumSquares += s0.add(s1).reduceLanes(VectorOperators.ADD);
        return len;
    }

    /** Each int lane holds two bf16 values; each becomes a float by moving it to the top half. */
    static int bf16(ByteBuffer b, int p, int n, ScanAccumulator a) {
        int len = n - n % STEP;
        IntVector flags = IntVector.zero(I);
        IntVector m0 = IntVector.zero(I);
        IntVector m1 = IntVector.zero(I);
        FloatVector s0 = FloatVector.zero(F);
        FloatVector s1 = FloatVector.zero(F);
        FloatVector s2 = FloatVector.zero(F);
        FloatVector s3 = FloatVector.zero(F);
        int half = STEP / 2;
        for (int q = p, end = p + len; q < end; q += STEP) {
            IntVector x = IntVector.fromByteBuffer(I, b, q, LE);
            IntVector y = IntVector.fromByteBuffer(I, b, q + half, LE);
            // both halves at once: 0x7F80 + 0x0080 carries into bit 15 (or 31) and no further
            flags = flags.or(x.and(0x7F807F80).add(0x00800080)).or(y.and(0x7F807F80).add(0x00800080));
            IntVector xl = x.lanewise(VectorOperators.LSHL, 16);
            IntVector xh = x.and(0xFFFF0000);
            IntVector yl = y.lanewise(VectorOperators.LSHL, 16);
            IntVector yh = y.and(0xFFFF0000);
            m0 = m0.max(xl.and(0x7FFFFFFF)).max(xh.and(0x7FFFFFFF));
            m1 = m1.max(yl.and(0x7FFFFFFF)).max(yh.and(0x7FFFFFFF));
            FloatVector a0 = xl.reinterpretAsFloats();
            FloatVector a1 = xh.reinterpretAsFloats();
            FloatVector a2 = yl.reinterpretAsFloats();
            FloatVector a3 = yh.reinterpretAsFloats();
            s0 = a0.fma(a0, s0);
            s1 = a1.fma(a1, s1);
            s2 = a2.fma(a2, s2);
            s3 = a3.fma(a3, s3);
        }
        if ((flags.reduceLanes(VectorOperators.OR) & 0x80008000) != 0) {
            return -1;
        }
        a.elements += len >>> 1;
        a.maxAbs = Math.max(a.maxAbs, Float.intBitsToFloat(m0.max(m1).reduceLanes(VectorOperators.MAX)));
        a.sumSquares += s0.add(s1).add(s2.add(s3)).reduceLanes(VectorOperators.ADD);
        return len;
    }

    /**
     * fp16: exponent and mantissa shifted into float position and scaled by 2^112 give the exact
     * value for normal and subnormal halves alike; max|x| is taken on the 15 magnitude bits.
     */
    static int f16(ByteBuffer b, int p, int n, ScanAccumulator a) {
        int len = n - n % STEP;
        IntVector flags = IntVector.zero(I);
        IntVector m0 = IntVector.zero(I);
        FloatVector s0 = FloatVector.zero(F);
        FloatVector s1 = FloatVector.zero(F);
        FloatVector s2 = FloatVector.zero(F);
        FloatVector s3 = FloatVector.zero(F);
        int half = STEP / 2;
        for (int q = p, end = p + len; q < end; q += STEP) {
            IntVector x = IntVector.fromByteBuffer(I, b, q, LE);
            IntVector y = IntVector.fromByteBuffer(I, b, q + half, LE);
            flags = flags.or(x.and(0x7C007C00).add(0x04000400)).or(y.and(0x7C007C00).add(0x04000400));
            IntVector xl = x.and(0x7FFF);
            IntVector xh = x.lanewise(VectorOperators.LSHR, 16).and(0x7FFF);
            IntVector yl = y.and(0x7FFF);
            IntVector yh = y.lanewise(VectorOperators.LSHR, 16).and(0x7FFF);
            m0 = m0.max(xl).max(xh).max(yl).max(yh);
            FloatVector a0 = xl.lanewise(VectorOperators.LSHL, 13).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector a1 = xh.lanewise(VectorOperators.LSHL, 13).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector a2 = yl.lanewise(VectorOperators.LSHL, 13).reinterpretAsFloats().mul(F16_SCALE);
            FloatVector a3 = yh.lanewise(VectorOperators.LSHL, 13).reinterpretAsFloats().mul(F16_SCALE);
            s0 = a0.fma(a0, s0);
            s1 = a1.fma(a1, s1);
            s2 = a2.fma(a2, s2);
            s3 = a3.fma(a3, s3);
        }
        if ((flags.reduceLanes(VectorOperators.OR) & 0x80008000) != 0) {
            return -1;
        }
        a.elements += len >>> 1;
        a.maxAbs = Math.max(a.maxAbs, Elements.F16[m0.reduceLanes(VectorOperators.MAX)]);
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
