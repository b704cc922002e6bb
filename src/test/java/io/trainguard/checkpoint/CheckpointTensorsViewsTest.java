package io.trainguard.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import io.trainguard.tensor.inspect.TensorBytes;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Views of one storage in a real torch.save file (the venv's torch), read for forensics in pieces
 * that start and end mid-row: every element must be the one torch's indexing gives.
 */
class CheckpointTensorsViewsTest {
    static final String PYTHON = "/opt/trainguard-venv/bin/python";
    /** base = arange(60).reshape(6, 10): element (i, j) holds 10 * i + j. */
    static final String WRITE = String.join("\n",
            "import sys, torch",
            "base = torch.arange(60, dtype=torch.float32).reshape(6, 10)",
            "torch.save({'transposed': base.t(), 'cols': base[1:5, 2:7], 'every2': base[:, ::2],",
            "            'cube': base.reshape(2, 3, 10)[:, 1:, 3:9], 'row': base[4], 'one': base[2, 3]}, sys.argv[1])");
    static Path dir;

    @BeforeAll
    static void write() throws Exception {
        dir = Files.createTempDirectory("views");
        Process p = new ProcessBuilder(PYTHON, "-c", WRITE, dir.resolve("views.pt").toString())
                .redirectErrorStream(true).start();
        String log = new String(p.getInputStream().readAllBytes());
        assertEquals(0, p.waitFor(), log);
    }

    static Map<String, TensorBytes> open(CheckpointTensors c) {
        return c.tensors().stream().collect(Collectors.toMap(t -> t.tensor().name(), CheckpointTensors.FileTensor::tensor));
    }

    /** The tensor's elements read in windows of {@code window} elements, as floats. */
    static float[] read(TensorBytes t, int window) throws Exception {
        int n = (int) t.elements();
        ByteBuffer dst = ByteBuffer.allocate(n * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int from = 0; from < n; from += window) {
            t.read(from, Math.min(window, n - from), dst);
        }
        assertEquals(n * 4, dst.position(), t.name() + ": bytes written");
        float[] out = new float[n];
        dst.flip().asFloatBuffer().get(out);
        return out;
    }

    static float[] expected(String name) {
        return switch (name) {
            case "transposed" -> values(10, 6, (i, j) -> 10 * j + i);
            case "cols" -> values(4, 5, (i, j) -> 10 * (i + 1) + j + 2);
            case "every2" -> values(6, 5, (i, j) -> 10 * i + 2 * j);
            case "cube" -> values(4, 6, (i, j) -> 30 * (i / 2) + 10 * (i % 2 + 1) + j + 3);
            case "row" -> values(1, 10, (i, j) -> 40 + j);
            case "one" -> new float[] {23};
            default -> throw new IllegalArgumentException(name);
        };
    }

    interface At {
        int value(int i, int j);
    }

    static float[] values(int rows, int cols, At at) {
        float[] v = new float[rows * cols];
        for (int i = 0; i < rows; i++) {
            for (int j = 0; j < cols; j++) {
                v[i * cols + j] = at.value(i, j);
            }
        }
        return v;
    }

    @Test
    void viewsOfOneStorage_readInPiecesAcrossRows_giveTorchsElements() throws Exception {
        // prevents: a strided view (a slice, a transpose, a step) gathered with a wrong offset or a
        // row run that spills into the next row, so forensics reports values the tensor never held
        PathPolicy paths = new PathPolicy(List.of(dir));
        try (CheckpointTensors c = CheckpointTensors.open(
                List.of(new CheckpointFileSpec(dir.resolve("views.pt").toString(), null, 0)), paths)) {
            Map<String, TensorBytes> byName = open(c);
            assertEquals(java.util.Set.of("transposed", "cols", "every2", "cube", "row", "one"), byName.keySet());
            for (var e : byName.entrySet()) {
                for (int window : new int[] {1, 3, 7, 1000}) {
                    assertArrayEquals(expected(e.getKey()), read(e.getValue(), window), 0f,
                            e.getKey() + " read in windows of " + window);
                }
            }
        }
    }
}
