package io.trainguard.tensor.format;

import java.nio.ByteBuffer;

/** Decoding of single elements of every dtype to double (little-endian buffers). */
public final class Elements {
    private Elements() {
    }

    /** fp16 bits -> float, all 65536 values, built once (Float.float16ToFloat is Java 20+). */
    public static final float[] F16 = new float[1 << 16];
    /** bf16 magnitude bits (sign cleared) -> float, for the scalar kernel's table lookup. */
    public static final float[] BF16_MAGNITUDES = new float[1 << 15];
    public static final float[] F8_E4M3_VALUES = new float[256];
    public static final float[] F8_E5M2_VALUES = new float[256];

    static {
        for (int h = 0; h < (1 << 16); h++) {
            F16[h] = halfToFloat(h);
        }
        for (int h = 0; h < (1 << 15); h++) {
            BF16_MAGNITUDES[h] = Float.intBitsToFloat(h << 16);
        }
        for (int b = 0; b < 256; b++) {
            F8_E4M3_VALUES[b] = e4m3ToFloat(b);
            // e5m2 is the top byte of an fp16
            F8_E5M2_VALUES[b] = F16[b << 8];
        }
    }

    public static float halfToFloat(int h) {
        int sign = (h >>> 15) & 1;
        int exp = (h >>> 10) & 0x1F;
        int mant = h & 0x3FF;
        float v;
        if (exp == 0) {
            v = mant * 0x1p-24f;
        } else if (exp == 31) {
            v = mant == 0 ? Float.POSITIVE_INFINITY : Float.NaN;
        } else {
            v = Float.intBitsToFloat(((exp - 15 + 127) << 23) | (mant << 13));
        }
        return sign == 1 ? -v : v;
    }

    /** float8_e4m3fn: bias 7, no infinities, S.1111.111 is NaN. */
    static float e4m3ToFloat(int b) {
        int sign = (b >>> 7) & 1;
        int exp = (b >>> 3) & 0xF;
        int mant = b & 0x7;
        float v;
        if (exp == 0xF && mant == 0x7) {
            v = Float.NaN;
        } else if (exp == 0) {
            v = mant * 0x1p-9f;
        } else {
            v = (1 + mant / 8f) * (float) Math.pow(2, exp - 7);
        }
        return sign == 1 ? -v : v;
    }

    /** The value of element {@code i} (element index, not byte index) of a buffer of {@code t}. */
    public static double get(ByteBuffer b, int byteBase, long i, TensorDType t) {
        int p = byteBase + (int) (i * t.byteSize());
        switch (t) {
            case F64: return b.getDouble(p);
            case F32: return b.getFloat(p);
            case F16: return F16[b.getShort(p) & 0xFFFF];
            case BF16: return Float.intBitsToFloat((b.getShort(p) & 0xFFFF) << 16);
            case F8_E4M3: return F8_E4M3_VALUES[b.get(p) & 0xFF];
            case F8_E5M2: return F8_E5M2_VALUES[b.get(p) & 0xFF];
            case I64: return b.getLong(p);
            case I32: return b.getInt(p);
            case I16: return b.getShort(p);
            case I8: return b.get(p);
            case U8:
            case BOOL: return b.get(p) & 0xFF;
            default: throw new IllegalArgumentException(t.name());
        }
    }
}
