package io.trainguard.tensor.scan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.tensor.format.Elements;
import io.trainguard.tensor.format.TensorDType;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Random;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.EnumSource;

/**
 * The vector and the scalar kernels against a plain element-by-element reference: same counts,
 * same first NaN/Inf index, same max|x| and CRC, norm within float-accumulation error — on lengths
 * that do and do not fill whole vector steps and blocks, with NaN/Inf anywhere, negative values and
 * subnormals.
 */
class ScanKernelsTest {
    private static final ScanOptions SIMD = new ScanOptions(Checksum.TG1, true, true);
    private static final ScanOptions SCALAR = new ScanOptions(Checksum.TG1, true, false);
    private static final ScanOptions SIMD_CRC = new ScanOptions(Checksum.CRC32C, true, true);

    @ParameterizedTest
    @EnumSource(value = TensorDType.class, names = {"F32", "BF16", "F16", "F64"})
    void bothKernels_agreeWithElementwiseReference(TensorDType t) {
        // prevents: the vector path reading a tensor differently from the scalar one (a lane
        // order, a tail after the last whole vector step, a NaN in the vector part of a block)
        assertTrue(ScanKernels.SIMD_AVAILABLE, "tests run with --add-modules jdk.incubator.vector (pom argLine)");
        Random r = new Random(42 + t.ordinal());
        int[] counts = {0, 1, 7, 31, 63, 64, 65, 129, 1000, 8191, 16384 + 3, 40_000};
        for (int n : counts) {
            for (int poison = -1; poison < 3; poison++) {
                ByteBuffer b = fill(t, n, r);
                int expectedFirst = -1;
                if (poison >= 0 && n > 0) {
                    // 0: a NaN, 1: an Inf, 2: both, somewhere in the middle and near the end
                    expectedFirst = r.nextInt(n);
                    put(b, t, expectedFirst, poison == 1 ? Double.NEGATIVE_INFINITY : Double.NaN);
                    if (poison == 2) {
                        put(b, t, n - 1 - r.nextInt(Math.max(1, n - expectedFirst)), Double.POSITIVE_INFINITY);
                    }
                }
                ScanAccumulator want = reference(b, n, t);
                for (ScanOptions o : new ScanOptions[] {SIMD, SCALAR, SIMD_CRC}) {
                    ScanAccumulator got = new ScanAccumulator();
                    ScanKernels.scan(b, 0, n * t.byteSize(), t, got, o);
                    String where = t + " n=" + n + " poison=" + poison + " simd=" + o.simd();
                    assertEquals(want.elements, got.elements, where);
                    assertEquals(want.nanCount, got.nanCount, where);
                    assertEquals(want.infCount, got.infCount, where);
                    assertEquals(want.firstNonFinite, got.firstNonFinite, where);
                    assertEquals(want.maxAbs, got.maxAbs, 0.0, where);
                    assertEquals(want.sumSquares, got.sumSquares, 1e-5 * want.sumSquares + 1e-30, where);
                    if (o.checksum() == Checksum.CRC32C) {
                        assertEquals(crc(b, n * t.byteSize()), got.crc, where);
                    } else {
                        assertEquals(ContentHash.of(b.duplicate().limit(n * t.byteSize())), got.tg1(), where);
                    }
                }
            }
        }
    }

    @ParameterizedTest
    @EnumSource(TensorDType.class)
    void contentHash_everyDtypeAndLength_sameAsDefinitionOnBothKernels(TensorDType t) {
        // prevents: a vector kernel feeding lanes in another order than the definition, a tail or
        // a partial word (odd-length int8/bool tensors) hashed differently, or a NaN block rescan
        // changing the checksum
        Random r = new Random(7 + t.ordinal());
        int[] byteCounts = {0, 1, 3, 4, 127, 128, 129, 4096 + 5, ContentHash.BLOCK - 1, ContentHash.BLOCK,
            ContentHash.BLOCK + 1, 3 * ContentHash.BLOCK + 1000};
        for (int bytes : byteCounts) {
            int len = bytes - bytes % t.byteSize();
            ByteBuffer b = ByteBuffer.allocateDirect(Math.max(1, len)).order(ByteOrder.LITTLE_ENDIAN);
            for (int i = 0; i < len; i++) {
                b.put(i, (byte) r.nextInt());
            }
            long want = ContentHash.of(b.duplicate().limit(len));
            for (ScanOptions o : new ScanOptions[] {SIMD, SCALAR}) {
                ScanAccumulator got = new ScanAccumulator();
                ScanKernels.scan(b, 0, len, t, got, o);
                assertEquals(want, got.tg1(), t + " bytes=" + len + " simd=" + o.simd());
            }
        }
    }

    private static ByteBuffer fill(TensorDType t, int n, Random r) {
        ByteBuffer b = ByteBuffer.allocateDirect(Math.max(1, n * t.byteSize())).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < n; i++) {
            double v = switch (r.nextInt(10)) {
                case 0 -> 0.0;
                case 1 -> -r.nextGaussian() * 1e3;
                case 2 -> r.nextGaussian() * 1e-6; // fp16 subnormals
                default -> r.nextGaussian() * 0.02;
            };
            put(b, t, i, v);
        }
        return b;
    }

    private static void put(ByteBuffer b, TensorDType t, int i, double v) {
        switch (t) {
            case F64 -> b.putDouble(i * 8, v);
            case F32 -> b.putFloat(i * 4, (float) v);
            case BF16 -> b.putShort(i * 2, (short) (Float.floatToRawIntBits((float) v) >>> 16));
            case F16 -> b.putShort(i * 2, floatToHalf((float) v));
            default -> throw new IllegalArgumentException(t.name());
        }
    }

    /** Round-to-nearest is not needed: any fp16 bit pattern is a valid test value. */
    private static short floatToHalf(float f) {
        if (Float.isNaN(f)) {
            return (short) 0x7E00;
        }
        int sign = Float.floatToRawIntBits(f) >>> 16 & 0x8000;
        float a = Math.abs(f);
        if (a >= 65520f) {
            return (short) (sign | 0x7C00);
        }
        if (a < 0x1p-14f) {
            return (short) (sign | Math.round(a * 0x1p24f));
        }
        int bits = Float.floatToRawIntBits(a);
        int exp = (bits >>> 23) - 127 + 15;
        return (short) (sign | exp << 10 | (bits >>> 13 & 0x3FF));
    }

    private static ScanAccumulator reference(ByteBuffer b, int n, TensorDType t) {
        ScanAccumulator a = new ScanAccumulator();
        for (int i = 0; i < n; i++) {
            double v = Elements.get(b, 0, i, t);
            if (Double.isNaN(v) || Double.isInfinite(v)) {
                if (Double.isNaN(v)) {
                    a.nanCount++;
                } else {
                    a.infCount++;
                }
                if (a.firstNonFinite < 0) {
                    a.firstNonFinite = i;
                }
            } else {
                a.maxAbs = Math.max(a.maxAbs, Math.abs(v));
                a.sumSquares += v * v;
            }
            a.elements++;
        }
        return a;
    }

    private static int crc(ByteBuffer b, int len) {
        java.util.zip.CRC32C c = new java.util.zip.CRC32C();
        c.update(b.duplicate().position(0).limit(len));
        return (int) c.getValue();
    }
}
