package io.trainguard.tensor.scan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.tensor.format.MappedWindow;
import io.trainguard.tensor.format.ReadMode;
import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.SafetensorsFile;
import io.trainguard.tensor.format.SafetensorsWriter;
import io.trainguard.tensor.format.TensorDType;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.zip.CRC32C;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class TensorScannerTest {
    @TempDir
    Path dir;
    // the smallest chunk (one content-hash block): large test tensors are split into many pieces,
    // scanned on both threads, exercising the merge
    private final TensorScanner scanner = new TensorScanner(2, ContentHash.BLOCK, ReadMode.MAP);

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
        float[] v = ramp(100_000);
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
    void scan_crc32cChecksums_equalPlainCrc32cOfTensorAndFile() throws Exception {
        // prevents: a parallel checksum that nobody can recompute (pieces not combined in order)
        Path p = new SafetensorsWriter().f32("f", ramp(33_333)).bf16("b", ramp(77)).write(dir.resolve("c.safetensors"));
        ScanResult r;
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            r = scanner.scan(f, new ScanOptions(Checksum.CRC32C, true, true), ScanProgress.NONE);
        }
        byte[] all = Files.readAllBytes(p);
        CRC32C c = new CRC32C();
        c.update(all);
        assertEquals("crc32c:" + Crc32c.hex((int) c.getValue()), r.fileChecksum());
        long dataStart = 8 + ByteBuffer.wrap(all).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        CRC32C t = new CRC32C();
        t.update(all, (int) dataStart, 33_333 * 4);
        assertEquals("crc32c:" + Crc32c.hex((int) t.getValue()), r.tensors().get(0).checksum());
    }

    @Test
    void scan_tg1Checksums_equalTheDefinitionWhateverTheChunkingAndThreads() throws Exception {
        // prevents: a checksum that depends on how the scan was split (pieces combined out of
        // order, a block cut at a piece boundary), so the same file verified twice would differ
        Path p = new SafetensorsWriter().f32("f", ramp(50_000)).bf16("b", ramp(77)).i32("i", 1, 2, 3)
                .write(dir.resolve("t.safetensors"));
        byte[] all = Files.readAllBytes(p);
        int dataStart = (int) (8 + ByteBuffer.wrap(all).order(ByteOrder.LITTLE_ENDIAN).getLong(0));
        long f = ContentHash.of(ByteBuffer.wrap(all, dataStart, 200_000));
        long b = ContentHash.of(ByteBuffer.wrap(all, dataStart + 200_000, 154));
        long i = ContentHash.of(ByteBuffer.wrap(all, dataStart + 200_154, 12));
        long file = ContentHash.ofSegments(ByteBuffer.wrap(all, 0, dataStart), ByteBuffer.wrap(all, dataStart, 200_000),
                ByteBuffer.wrap(all, dataStart + 200_000, 154), ByteBuffer.wrap(all, dataStart + 200_154, 12));
        ScanResult small = scan(p);
        assertEquals("tg1:" + ContentHash.hex(f), small.tensors().get(0).checksum());
        assertEquals("tg1:" + ContentHash.hex(b), small.tensors().get(1).checksum());
        assertEquals("tg1:" + ContentHash.hex(file), small.fileChecksum());
        try (TensorScanner one = new TensorScanner(1); SafetensorsFile sf = SafetensorsFile.open(p)) {
            assertEquals(small, withoutTime(one.scan(sf, ScanOptions.FULL, ScanProgress.NONE), small.nanos()));
        }
    }

    @Test
    void scan_oneFloatChanged_fileAndTensorChecksumsChange() throws Exception {
        // prevents: a checksum blind to a real edit of the data (here: one weight's sign flipped)
        float[] v = ramp(20_000);
        Path p = new SafetensorsWriter().f32("w", v).write(dir.resolve("a.safetensors"));
        ScanResult before = scan(p);
        v[12_345] = -v[12_345];
        new SafetensorsWriter().f32("w", v).write(p);
        ScanResult after = scan(p);
        assertNotEquals(before.fileChecksum(), after.fileChecksum());
        assertNotEquals(before.tensors().get(0).checksum(), after.tensors().get(0).checksum());
    }

    @Test
    void scan_mappedAndPreadReads_giveIdenticalResults() throws Exception {
        // prevents: the mapped windows (widened to 2 MiB boundaries) scanning bytes off by their
        // lead, or cutting a piece at a window's end, which only a pread comparison would show
        float[] v = ramp(900_000); // 3.6 MB: windows start and end inside and across 2 MiB steps
        v[876_543] = Float.POSITIVE_INFINITY;
        Path p = new SafetensorsWriter().bf16("b", ramp(3)).f32("f", v).bf16("g", ramp(300_001)).i32("i", 1, -9)
                .write(dir.resolve("modes.safetensors"));
        int chunk = 5 * ContentHash.BLOCK;
        for (ScanOptions o : new ScanOptions[] {ScanOptions.FULL, new ScanOptions(Checksum.CRC32C, true, true)}) {
            try (TensorScanner mapped = new TensorScanner(2, chunk, ReadMode.MAP);
                    TensorScanner read = new TensorScanner(2, chunk, ReadMode.PREAD);
                    SafetensorsFile f = SafetensorsFile.open(p)) {
                assertEquals(ReadMode.MAP, mapped.readMode());
                ScanResult m = mapped.scan(f, o, ScanProgress.NONE);
                ScanResult r = read.scan(f, o, ScanProgress.NONE);
                assertEquals(r, withoutTime(m, r.nanos()));
                assertEquals(876_543, m.tensors().get(1).firstNonFiniteIndex());
                assertEquals(3.5, m.tensors().get(2).maxAbs());
            }
        }
    }

    @Test
    void scanMapped_fileTruncatedUnderTheMapping_rejectedAsChangedAndScannerKeepsWorking() throws Exception {
        // prevents: a trainer truncating a checkpoint mid-verification crashing the sidecar (the
        // read of a mapped page the file no longer has is a SIGBUS) or being reported as a bug.
        // The unit runs on a pool thread as in a scan: HotSpot reports the fault late, up to the task's end.
        Path p = new SafetensorsWriter().f32("f", ramp(1_000_000)).write(dir.resolve("trunc.safetensors"));
        ExecutorService pool = Executors.newSingleThreadExecutor();
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            long pos = f.header().dataStart();
            int len = 4_000_000;
            var unit = new ScanPlan.Unit(pos, len, List.of(new ScanPlan.Piece(0, 0, pos, len)));
            try (MappedWindow w = f.map(pos, len)) {
                try (var raf = new RandomAccessFile(p.toFile(), "rw")) {
                    raf.setLength(4096);
                }
                var failed = assertThrows(ExecutionException.class,
                        () -> pool.submit(() -> UnitScan.scanMapped(f, w, unit, f.entries(), ScanOptions.FULL))
                                .get());
                RuntimeException e = UnitScan.unitFailure(f, failed.getCause());
                assertTrue(e instanceof RejectedTensorFileException, e.toString());
                assertTrue(e.getMessage().contains("changed while being verified"), e.getMessage());
                assertTrue(e.getMessage().contains("to 4096 bytes"), e.getMessage());
            }
            RejectedTensorFileException e = assertThrows(RejectedTensorFileException.class,
                    () -> scanner.scan(f, ScanOptions.FULL, ScanProgress.NONE));
            assertTrue(e.reason().contains("size changed"), e.reason());
        } finally {
            pool.shutdownNow();
        }
        assertEquals(3.5, scan(new SafetensorsWriter().f32("f", ramp(10)).write(dir.resolve("next.safetensors")))
                .tensors().get(0).maxAbs());
    }

    private static ScanResult withoutTime(ScanResult r, long nanos) {
        return new ScanResult(r.tensors(), r.bytes(), nanos, r.fileChecksum());
    }

    @Test
    void scan_nanAndInfAtKnownIndices_countedWithFirstIndex() throws Exception {
        // prevents: a NaN in the middle of a large tensor being missed by the block fast path
        float[] v = ramp(50_000);
        v[43_210] = Float.NaN;
        v[44_000] = Float.NEGATIVE_INFINITY;
        float[] w = ramp(300);
        w[17] = Float.POSITIVE_INFINITY;
        Path p = new SafetensorsWriter().f32("clean", ramp(10)).f32("layer.3.weight", v).bf16("bf", w)
                .write(dir.resolve("nan.safetensors"));
        ScanResult r = scan(p);
        TensorStats bad = r.firstNonFinite().orElseThrow();
        assertEquals("layer.3.weight", bad.name());
        assertEquals(1, bad.nanCount());
        assertEquals(1, bad.infCount());
        assertEquals(43_210, bad.firstNonFiniteIndex());
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
        float[] v = ramp(40_001);
        v[40_000] = Float.NaN;
        Path p = new SafetensorsWriter().f32("f", v).bf16("b", 1, 2, 3).write(dir.resolve("fo.safetensors"));
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            ScanResult r = scanner.scan(f, new ScanOptions(Checksum.NONE, false, true), ScanProgress.NONE);
            assertEquals(40_000, r.tensors().get(0).firstNonFiniteIndex());
            assertEquals(1, r.tensors().get(0).nanCount());
            assertTrue(Double.isNaN(r.tensors().get(1).maxAbs()));
            assertEquals(0, r.tensors().get(1).nonFiniteCount());
        }
    }

    @Test
    void scanBuffer_withoutChecksum_hasNone() {
        // prevents: reporting a checksum that was never computed
        ByteBuffer b = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putFloat(1).putFloat(-2).flip();
        TensorStats s = TensorScanner.scanBuffer("x", TensorDType.F32, new long[] {2}, b, Checksum.NONE);
        assertNull(s.checksum());
        assertEquals(2.0, s.maxAbs());
    }

    @Test
    void warmUp_vectorKernels_verifiesASyntheticCheckpointAndLeavesNoFile() throws Exception {
        // prevents: a warm-up that silently stopped exercising the real scan path (the first
        // verification after start then ran at a fraction of the speed), or that left files behind
        long before = countWarmUpFiles();
        String what = scanner.warmUp(ScanOptions.FULL);
        assertTrue(what.contains("300 scans of a synthetic checkpoint"), what);
        assertEquals(before, countWarmUpFiles());
        assertEquals("nothing (scalar kernels)", scanner.warmUp(new ScanOptions(Checksum.TG1, true, false)));
    }

    private static long countWarmUpFiles() throws java.io.IOException {
        try (var s = Files.list(Path.of(System.getProperty("java.io.tmpdir")))) {
            return s.filter(f -> f.getFileName().toString().startsWith("trainguard-warmup-")).count();
        }
    }
}
