package io.trainguard.tensor.format;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/** Writes safetensors files for tests, including deliberately broken ones. */
public final class SafetensorsWriter {
    private final List<String> headerEntries = new ArrayList<>();
    private final java.io.ByteArrayOutputStream data = new java.io.ByteArrayOutputStream();

    public SafetensorsWriter f32(String name, float... v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) {
            b.putFloat(x);
        }
        return raw(name, "F32", new long[] {v.length}, b.array());
    }

    /** bf16 by truncating the float bits (exact for the values the tests use). */
    public SafetensorsWriter bf16(String name, float... v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 2).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) {
            b.putShort((short) (Float.floatToRawIntBits(x) >>> 16));
        }
        return raw(name, "BF16", new long[] {v.length}, b.array());
    }

    public SafetensorsWriter f16Bits(String name, short... bits) {
        ByteBuffer b = ByteBuffer.allocate(bits.length * 2).order(ByteOrder.LITTLE_ENDIAN);
        for (short x : bits) {
            b.putShort(x);
        }
        return raw(name, "F16", new long[] {bits.length}, b.array());
    }

    public SafetensorsWriter i32(String name, int... v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int x : v) {
            b.putInt(x);
        }
        return raw(name, "I32", new long[] {v.length}, b.array());
    }

    public SafetensorsWriter raw(String name, String dtype, long[] shape, byte[] bytes) {
        long begin = data.size();
        data.writeBytes(bytes);
        return entry(name, dtype, shape, begin, data.size());
    }

    /** A header entry with arbitrary offsets, for lying headers; writes no data. */
    public SafetensorsWriter entry(String name, String dtype, long[] shape, long begin, long end) {
        StringBuilder s = new StringBuilder();
        for (long d : shape) {
            s.append(s.length() == 0 ? "" : ",").append(d);
        }
        headerEntries.add("\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":[" + s + "],\"data_offsets\":["
                + begin + "," + end + "]}");
        return this;
    }

    public SafetensorsWriter extraData(byte[] bytes) {
        data.writeBytes(bytes);
        return this;
    }

    public byte[] bytes() {
        byte[] h = ("{" + String.join(",", headerEntries) + "}").getBytes(StandardCharsets.UTF_8);
        int pad = (8 - h.length % 8) % 8;
        ByteBuffer b = ByteBuffer.allocate(8 + h.length + pad + data.size()).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(h.length + pad).put(h);
        for (int i = 0; i < pad; i++) {
            b.put((byte) ' ');
        }
        b.put(data.toByteArray());
        return b.array();
    }

    public Path write(Path p) throws IOException {
        Files.write(p, bytes());
        return p;
    }
}
