package io.trainguard.tensor;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The only test class that loads DJL: the lazy-load assertion depends on it. */
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
    void readNumpy_firstNpy_loadsEngineLazilyAndOffline(@org.junit.jupiter.api.io.TempDir Path dir) throws Exception {
        // prevents: libtorch loaded at startup (idle RSS) or downloaded at run time (offline pods)
        DjlTensors djl = new DjlTensors(Path.of(System.getProperty("user.home"), ".cache", "trainguard", "djl"),
                64 << 20);
        assertFalse(DjlTensors.isEngineLoaded(), "constructing DjlTensors must not load the engine");
        Path npy = Files.write(dir.resolve("w.npy"), npyF32(1, Float.NaN, -3, Float.POSITIVE_INFINITY));
        List<TensorStats> s = djl.readNumpy(npy, true);
        assertTrue(DjlTensors.isEngineLoaded());
        assertEquals("true", System.getProperty("ai.djl.offline"));
        assertEquals(1, s.size());
        assertEquals(TensorDType.F32, s.get(0).dtype());
        assertEquals(1, s.get(0).nanCount());
        assertEquals(1, s.get(0).infCount());
        assertEquals(1, s.get(0).firstNonFiniteIndex());
        assertEquals(3.0, s.get(0).maxAbs());
    }
}
