package io.trainguard.tensor.scan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.SegmentedFile;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.format.torch.TorchArchive;
import io.trainguard.tensor.format.torch.ZipDirectory;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.function.Function;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

/** torch.save files written by real torch 1.13 (Debian) and torch 2.x (the venv), read and scanned. */
class TorchStorageScanTest {
    static final String OLD = "/usr/bin/python3";
    static final String NEW = "/opt/trainguard-venv/bin/python";
    static Path dir;
    static TensorScanner scanner;

    @BeforeAll
    static void write() throws Exception {
        dir = Files.createTempDirectory("torch-files");
        scanner = new TensorScanner(2);
        for (String py : List.of(OLD, NEW)) {
            Path out = Files.createDirectories(dir.resolve(py.equals(OLD) ? "old" : "new"));
            Process p = new ProcessBuilder(py, Path.of("src/test/resources/torch/write_torch_files.py").toAbsolutePath()
                    .toString(), out.toString()).redirectErrorStream(true).start();
            String log = new String(p.getInputStream().readAllBytes());
            if (p.waitFor() != 0) {
                Files.writeString(out.resolve("failed"), log);
            }
        }
    }

    @AfterAll
    static void close() {
        scanner.close();
    }

    static Path file(String torch, String name) {
        Path d = dir.resolve(torch);
        assumeTrue(!Files.exists(d.resolve("failed")), () -> "torch in " + torch + " python could not write files");
        return d.resolve(name);
    }

    static Map<String, TensorStats> scan(Path p) throws IOException, InterruptedException {
        try (SegmentedFile f = SegmentedFile.open(p)) {
            TorchArchive a = TorchArchive.read(f.channel(), 0, f.fileSize(), p.getFileName().toString(), "");
            ScanResult r = TorchStorageScan.scan(scanner, f, List.of(a), new ScanOptions(Checksum.TG1, true, true),
                    ScanProgress.NONE);
            return r.tensors().stream().collect(Collectors.toMap(TensorStats::name, Function.identity()));
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"old", "new"})
    void scan_trainingState_everyTensorFiniteWithExactStats(String torch) throws Exception {
        // prevents: a torch.save training state (model, AdamW state, views, dtypes) read wrongly
        Map<String, TensorStats> t = scan(file(torch, "state.pt"));
        assertTrue(t.values().stream().allMatch(TensorStats::finite), t.toString());
        assertTrue(t.containsKey("model.0.weight") && t.containsKey("optimizer.state.0.exp_avg_sq"), t.keySet()
                .toString());
        assertEquals(TensorDType.BF16, t.get("bf16").dtype());
        assertEquals(TensorDType.F16, t.get("fp16").dtype());
        assertEquals(TensorDType.I64, t.get("i64").dtype());
        assertEquals(1, t.get("zero_dim").elements());
        assertEquals(2.5, t.get("zero_dim").maxAbs());
        // base = arange(24) as 4x6: the slice rows 1..2 hold 6..17, the transpose all of 0..23
        assertEquals(23.0, t.get("shared_a").maxAbs());
        assertEquals(12, t.get("shared_b").elements());
        assertEquals(17.0, t.get("shared_b").maxAbs());
        assertEquals(24, t.get("view_t").elements());
        assertEquals(List.of(6L, 4L), t.get("view_t").shape());
        assertEquals(t.get("shared_a").checksum(), t.get("view_t").checksum(), "same bytes, same checksum");
        assertEquals(Math.sqrt(java.util.stream.IntStream.range(6, 18).mapToDouble(i -> i * i).sum()),
                t.get("shared_b").l2Norm(), 1e-9);
    }

    @ParameterizedTest
    @ValueSource(strings = {"old", "new"})
    void scan_storageSharedByViews_readOnce(String torch) throws Exception {
        // prevents: a storage shared by several tensors counted (and read) once per tensor
        Path p = file(torch, "state.pt");
        try (SegmentedFile f = SegmentedFile.open(p)) {
            TorchArchive a = TorchArchive.read(f.channel(), 0, f.fileSize(), "state.pt", "");
            long distinctBytes = a.storages().values().stream().mapToLong(TorchArchive.StorageRecord::bytes).sum();
            TorchStorageScan.scan(scanner, f, List.of(a), new ScanOptions(Checksum.TG1, true, true), ScanProgress.NONE);
            long scanned = f.entries().stream().mapToLong(e -> e.byteLength()).sum();
            assertEquals(distinctBytes, scanned);
            long shared = a.tensors().stream().filter(n -> n.name().startsWith("shared_a")
                    || n.name().equals("shared_b") || n.name().equals("view_t") || n.name().equals("strided"))
                    .map(n -> n.ref().storage().key()).distinct().count();
            assertEquals(1, shared);
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"old", "new"})
    void read_storageRecords_storedUncompressedAnd64ByteAligned(String torch) throws Exception {
        // prevents: scanning in place on the assumption of stored, aligned records that torch does not keep
        Path p = file(torch, "state.pt");
        try (SegmentedFile f = SegmentedFile.open(p)) {
            ZipDirectory d = ZipDirectory.read(f.channel(), 0, f.fileSize(), "state.pt");
            for (ZipDirectory.Entry e : d.entries().values()) {
                assertEquals(0, e.method(), e.name());
                if (e.name().contains("/data/")) {
                    assertEquals(0, e.dataStart() % 64, e.name());
                }
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"old", "new"})
    void scan_nanInWeight_namesTheTensor(String torch) throws Exception {
        // prevents: a NaN in a torch.save weight passing verification
        Map<String, TensorStats> t = scan(file(torch, "nan_weight.pt"));
        List<String> bad = t.values().stream().filter(s -> !s.finite()).map(TensorStats::name).toList();
        assertEquals(List.of("model.0.weight"), bad);
        assertEquals(1, t.get("model.0.weight").nanCount());
        assertEquals(6, t.get("model.0.weight").firstNonFiniteIndex());
    }

    @ParameterizedTest
    @ValueSource(strings = {"old", "new"})
    void scan_infInOptimizerState_namesTheTensor(String torch) throws Exception {
        // prevents: a poisoned Adam exp_avg_sq restored because only weights were checked
        Map<String, TensorStats> t = scan(file(torch, "nan_optim.pt"));
        List<String> bad = t.values().stream().filter(s -> !s.finite()).map(TensorStats::name).toList();
        assertEquals(List.of("optimizer.state.0.exp_avg_sq"), bad);
        assertEquals(1, t.get("optimizer.state.0.exp_avg_sq").infCount());
    }

    @ParameterizedTest
    @ValueSource(strings = {"old", "new"})
    void read_reduceToOsSystem_rejectedNamingTheGlobal(String torch) throws Exception {
        // prevents: a pickle that would run code being opened, or refused without saying why
        Path p = file(torch, "evil.pt");
        RejectedTensorFileException e = assertThrows(RejectedTensorFileException.class, () -> scan(p));
        assertTrue(e.reason().contains("'posix.system'") || e.reason().contains("'nt.system'"), e.reason());
        assertFalse(Files.exists(p.resolveSibling("evil-ran")));
    }

    @ParameterizedTest
    @ValueSource(strings = {"old", "new"})
    void read_truncated_rejectedWithReason(String torch) throws Exception {
        // prevents: a half-written torch.save file read as a checkpoint
        Path p = file(torch, "state.pt");
        byte[] all = Files.readAllBytes(p);
        for (int keep : new int[] {all.length - 10, all.length / 2, 100}) {
            Path cut = Files.write(dir.resolve(torch + "-cut.pt"), java.util.Arrays.copyOf(all, keep));
            RejectedTensorFileException e = assertThrows(RejectedTensorFileException.class, () -> scan(cut));
            assertTrue(e.reason().contains("truncated"), e.reason());
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"old", "new"})
    void read_storageShorterThanPickleSays_rejected(String torch) throws Exception {
        // prevents: a file whose pickle promises more elements than its records hold (a lying file)
        Path lie = file(torch, "lying.pt");
        RejectedTensorFileException e = assertThrows(RejectedTensorFileException.class, () -> scan(lie));
        assertTrue(e.reason().contains("holds 48 bytes") && e.reason().contains("24 F32 elements"), e.reason());
    }
}
