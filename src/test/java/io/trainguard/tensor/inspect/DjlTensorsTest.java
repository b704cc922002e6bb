package io.trainguard.tensor.inspect;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.tensor.format.FormatSniffer;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.scan.Checksum;
import io.trainguard.tensor.scan.TensorStats;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestMethodOrder;

/** The only test class that loads DJL: the lazy-load assertion depends on it, so it runs first. */
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class DjlTensorsTest {

    /** A version-1.0 .npy of little-endian float32. */
    static byte[] npyF32(float... v) {
        String dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + v.length + ",), }";
        int headerLen = 10 + dict.length() + 1;
        int pad = (64 - headerLen % 64) % 64;
        String header = dict + " ".repeat(pad) + "\n";
        ByteBuffer b = ByteBuffer.allocate(10 + header.length() + v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        b.put((byte) 0x93).put("NUMPY".getBytes(StandardCharsets.US_ASCII)).put((byte) 1).put((byte) 0);
        b.putShort((short) header.length()).put(header.getBytes(StandardCharsets.US_ASCII));
        for (float x : v) {
            b.putFloat(x);
        }
        return b.array();
    }

    @Test
    @Order(1)
    void readNumpy_firstNpy_loadsEngineLazilyAndOffline(@org.junit.jupiter.api.io.TempDir Path dir) throws Exception {
        // prevents: libtorch loaded at startup (idle RSS) or downloaded at run time (offline pods)
        DjlTensors djl = new DjlTensors(Path.of(System.getProperty("user.home"), ".cache", "trainguard", "djl"),
                64 << 20);
        assertFalse(DjlTensors.isEngineLoaded(), "constructing DjlTensors must not load the engine");
        Path npy = Files.write(dir.resolve("w.npy"), npyF32(1, Float.NaN, -3, Float.POSITIVE_INFINITY));
        List<TensorStats> s = djl.readNumpy(npy, Checksum.TG1);
        assertTrue(DjlTensors.isEngineLoaded());
        assertEquals("true", System.getProperty("ai.djl.offline"));
        assertEquals(1, s.size());
        assertEquals(TensorDType.F32, s.get(0).dtype());
        assertEquals(1, s.get(0).nanCount());
        assertEquals(1, s.get(0).infCount());
        assertEquals(1, s.get(0).firstNonFiniteIndex());
        assertEquals(3.0, s.get(0).maxAbs());
    }

    private static Path fixture(String name) throws Exception {
        return Path.of(DjlTensorsTest.class.getResource("/tensor-fixtures/" + name).toURI());
    }

    private static DjlTensors djl() {
        return new DjlTensors(Path.of(System.getProperty("user.home"), ".cache", "trainguard", "djl"), 64 << 20);
    }

    @Test
    void readNumpy_npzArchive_scansEveryArrayByName() throws Exception {
        // prevents: an .npz checkpoint read as one array, or its Inf values missed
        List<TensorStats> s = djl().readNumpy(fixture("two.npz"), Checksum.TG1);
        java.util.Map<String, TensorStats> byName = new java.util.HashMap<>();
        s.forEach(t -> byName.put(t.name(), t));
        assertEquals(java.util.Set.of("good", "bad"), byName.keySet());
        assertEquals(0, byName.get("good").nonFiniteCount());
        assertEquals(3.0, byName.get("good").maxAbs());
        assertEquals(Math.sqrt(14.0), byName.get("good").l2Norm(), 1e-6);
        assertEquals(2, byName.get("bad").infCount());
        assertEquals(1, byName.get("bad").firstNonFiniteIndex());
    }

    @Test
    void readTorchScript_nestedModule_scansParametersOfEverySubmodule() throws Exception {
        // prevents: only top-level parameters checked, so a NaN deep in the model passes
        assertEquals(FormatSniffer.Kind.TORCHSCRIPT_ZIP, FormatSniffer.sniff(fixture("nan.torchscript.pt")));
        List<TensorStats> clean = djl().readTorchScript(fixture("clean.torchscript.pt"));
        assertEquals(5, clean.size(), "scale + 2 x (weight, bias): " + clean);
        assertTrue(clean.stream().allMatch(t -> t.nonFiniteCount() == 0), clean.toString());
        assertEquals(7.5, clean.stream().filter(t -> t.name().endsWith("scale")).findFirst().orElseThrow().maxAbs());

        List<TensorStats> bad = djl().readTorchScript(fixture("nan.torchscript.pt"));
        List<TensorStats> nonFinite = bad.stream().filter(t -> t.nonFiniteCount() > 0).toList();
        assertEquals(1, nonFinite.size(), bad.toString());
        assertTrue(nonFinite.get(0).name().contains("2") && nonFinite.get(0).name().endsWith("weight"),
                nonFinite.get(0).name());
        assertEquals(1, nonFinite.get(0).nanCount());
        assertEquals(5, nonFinite.get(0).firstNonFiniteIndex());
    }

    @Test
    void djlForensics_bf16Rows_widenedExactlyAndNonFiniteLocated() throws Exception {
        // prevents: BF16 handed to libtorch as BFLOAT16 (DJL aborts the JVM) or decoded wrongly when widened
        float[] v = {1f, -2f, 0.5f, 3f, Float.NaN, 4f, -8f, Float.POSITIVE_INFINITY, 0.25f, 6f, 7f, 1.5f};
        ByteBuffer bytes = ByteBuffer.allocate(2 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) {
            bytes.putShort((short) (Float.floatToRawIntBits(x) >>> 16)); // all exact in bf16
        }
        TensorBytes t = new TensorBytes() {
            public String name() {
                return "w";
            }

            public TensorDType dtype() {
                return TensorDType.BF16;
            }

            public long[] shape() {
                return new long[] {3, 4};
            }

            public void read(long from, int count, ByteBuffer dst) {
                dst.put(bytes.slice((int) from * 2, count * 2));
            }
        };
        CheckpointTensorSummary c = new DjlForensics(djl(), DjlForensics.BLOCK_ELEMENTS).inspect("f.safetensors", t);
        assertEquals(1, c.summary().nanCount());
        assertEquals(1, c.summary().infCount());
        assertEquals(List.of(4L, 7L), c.summary().firstNonFiniteIndices());
        assertEquals("row", c.unit());
        assertEquals(List.of(1L), c.firstNonFiniteUnits());
        assertEquals(-8.0, c.summary().min());
        assertEquals(7.0, c.summary().max());
        assertEquals((1 - 2 + 0.5 + 3 + 4 - 8 + 0.25 + 6 + 7 + 1.5) / 10, c.summary().mean(), 1e-12);
    }
}
