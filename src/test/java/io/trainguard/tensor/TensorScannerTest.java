package io.trainguard.tensor;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class TensorScannerTest {
    @TempDir
    Path dir;
    // 64-byte chunks: every test file is split into many pieces, exercising the merge
    private final TensorScanner scanner = new TensorScanner(2, 64);

    @AfterEach
    void close() {
        scanner.close();
    }

    private ScanResult scan(Path p) throws Exception {
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            return scanner.scan(f, ScanOptions.FULL, ScanProgress.NONE);
        }
    }

    private static float[] ramp(int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = (i % 7) - 3.5f;
        }
        return v;
    }

    @Test
    void scan_cleanTensorsOfEveryKind_exactStats() throws Exception {
        // prevents: wrong max/norm from the lane tricks or from merging pieces across chunks
        float[] v = ramp(1000);
        short[] half = {0x3C00, (short) 0xC000, 0x0000, 0x7BFF}; // 1, -2, 0, 65504
        Path p = new SafetensorsWriter().f32("f", v).bf16("b", v).f16Bits("h", half).i32("i", -5, 3)
                .write(dir.resolve("ok.safetensors"));
        ScanResult r = scan(p);
        double ss = 0;
        for (float x : v) {
            ss += (double) x * x;
        }
        TensorStats f = r.tensors().get(0);
        assertEquals(0, f.nonFiniteCount());
        assertEquals(3.5, f.maxAbs());
        assertEquals(Math.sqrt(ss), f.l2Norm(), 1e-4 * Math.sqrt(ss));
        assertEquals(3.5, r.tensors().get(1).maxAbs());
        assertEquals(65504.0, r.tensors().get(2).maxAbs());
        assertEquals(5.0, r.tensors().get(3).maxAbs());
        assertEquals(Math.sqrt(34), r.tensors().get(3).l2Norm(), 1e-9);
    }

    @Test
    void scan_checksums_equalPlainCrc32cOfTensorAndFile() throws Exception {
        // prevents: a parallel checksum that nobody can recompute (pieces not combined in order)
        Path p = new SafetensorsWriter().f32("f", ramp(333)).bf16("b", ramp(77)).write(dir.resolve("c.safetensors"));
        ScanResult r = scan(p);
        byte[] all = Files.readAllBytes(p);
        CRC32C c = new CRC32C();
        c.update(all);
        assertEquals(Crc32c.hex((int) c.getValue()), r.fileCrc32c());
        long dataStart = 8 + ByteBuffer.wrap(all).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        CRC32C t = new CRC32C();
        t.update(all, (int) dataStart, 333 * 4);
        assertEquals(Crc32c.hex((int) t.getValue()), r.tensors().get(0).crc32c());
    }

    @Test
    void scan_nanAndInfAtKnownIndices_countedWithFirstIndex() throws Exception {
        // prevents: a NaN in the middle of a large tensor being missed by the block fast path
        float[] v = ramp(5000);
        v[4321] = Float.NaN;
        v[4400] = Float.NEGATIVE_INFINITY;
        float[] w = ramp(300);
        w[17] = Float.POSITIVE_INFINITY;
        Path p = new SafetensorsWriter().f32("clean", ramp(10)).f32("layer.3.weight", v).bf16("bf", w)
                .write(dir.resolve("nan.safetensors"));
        ScanResult r = scan(p);
        TensorStats bad = r.firstNonFinite().orElseThrow();
        assertEquals("layer.3.weight", bad.name());
        assertEquals(1, bad.nanCount());
        assertEquals(1, bad.infCount());
        assertEquals(4321, bad.firstNonFiniteIndex());
        assertEquals(3.5, bad.maxAbs()); // stats stay over the finite part
        TensorStats bf = r.tensors().get(2);
        assertEquals(17, bf.firstNonFiniteIndex());
        assertEquals(1, bf.infCount());
        assertEquals(2, r.nonFiniteTensors());
    }

    @Test
    void scan_fp16NanBits_detected() throws Exception {
        // prevents: fp16 exponent mask confused with bf16's (0x7C00 vs 0x7F80)
        Path p = new SafetensorsWriter().f16Bits("h", (short) 0x3C00, (short) 0x7E00, (short) 0xFC00, (short) 0x7BFF)
                .write(dir.resolve("h.safetensors"));
        TensorStats h = scan(p).tensors().get(0);
        assertEquals(1, h.nanCount());
        assertEquals(1, h.infCount());
        assertEquals(1, h.firstNonFiniteIndex());
    }

    @Test
    void scan_fileGrowsWhileRead_rejected() throws Exception {
        // prevents: verifying a checkpoint the trainer is still writing and calling it good
        Path p = new SafetensorsWriter().f32("f", ramp(2000)).write(dir.resolve("grow.safetensors"));
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            ScanProgress writer = (done, total) -> {
                try {
                    Files.write(p, new byte[16], StandardOpenOption.APPEND);
                } catch (java.io.IOException e) {
                    throw new java.io.UncheckedIOException(e);
                }
            };
            RejectedTensorFileException e = assertThrows(RejectedTensorFileException.class,
                    () -> scanner.scan(f, ScanOptions.FULL, writer));
            assertTrue(e.reason().contains("changed while being verified"), e.reason());
        }
    }

    @Test
    void scan_finiteOnlyMode_stillFindsEveryNaN() throws Exception {
        // prevents: the fast finite-only mode missing a NaN in a tail shorter than 8 bytes
        float[] v = ramp(1001);
        v[1000] = Float.NaN;
        Path p = new SafetensorsWriter().f32("f", v).bf16("b", 1, 2, 3).write(dir.resolve("fo.safetensors"));
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            ScanResult r = scanner.scan(f, new ScanOptions(false, false, true), ScanProgress.NONE);
            assertEquals(1000, r.tensors().get(0).firstNonFiniteIndex());
            assertEquals(1, r.tensors().get(0).nanCount());
            assertTrue(Double.isNaN(r.tensors().get(1).maxAbs()));
            assertEquals(0, r.tensors().get(1).nonFiniteCount());
        }
    }

    @Test
    void scanBuffer_withoutChecksum_hasNoCrc() {
        // prevents: reporting a checksum that was never computed
        ByteBuffer b = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putFloat(1).putFloat(-2).flip();
        TensorStats s = TensorScanner.scanBuffer("x", TensorDType.F32, new long[] {2}, b, false);
        assertNull(s.crc32c());
        assertEquals(2.0, s.maxAbs());
    }
}
