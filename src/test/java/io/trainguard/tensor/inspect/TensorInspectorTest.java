package io.trainguard.tensor.inspect;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.tensor.format.SafetensorsWriter;
import io.trainguard.tensor.format.TensorDType;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import org.junit.jupiter.api.Test;

class TensorInspectorTest {
    private final TensorInspector inspector = new TensorInspector(1024, 4);

    private static RawTensor f32(String name, float... v) {
        ByteBuffer b = ByteBuffer.allocate(v.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : v) {
            b.putFloat(x);
        }
        return new RawTensor(name, TensorDType.F32, new long[] {v.length}, b.flip());
    }

    @Test
    void inspect_mixedValues_countsIndicesAndFiniteStats() {
        // prevents: NaN leaking into min/max/mean/std, or offending indices off by one
        TensorSummary s = inspector.inspect(List.of(f32("act", 1, Float.NaN, 3, Float.POSITIVE_INFINITY, 5))).get(0);
        assertEquals(1, s.nanCount());
        assertEquals(1, s.infCount());
        assertEquals(List.of(1L, 3L), s.firstNonFiniteIndices());
        assertEquals(1.0, s.min());
        assertEquals(5.0, s.max());
        assertEquals(3.0, s.mean(), 1e-12);
        assertEquals(Math.sqrt(8.0 / 3), s.std(), 1e-12);
    }

    @Test
    void inspect_manyNaN_reportsAtMost16Indices() {
        // prevents: a response as large as the tensor when everything is NaN
        float[] v = new float[100];
        java.util.Arrays.fill(v, Float.NaN);
        TensorSummary s = new TensorInspector(1 << 20, 4).inspect(List.of(f32("x", v))).get(0);
        assertEquals(100, s.nanCount());
        assertEquals(16, s.firstNonFiniteIndices().size());
        assertTrue(Double.isNaN(s.mean()));
    }

    @Test
    void inspect_overByteLimit_refusedWithLimitName() {
        // prevents: one forensic request exhausting the sidecar's heap
        TensorInputException e = assertThrows(TensorInputException.class,
                () -> inspector.inspect(List.of(f32("big", new float[300]))));
        assertTrue(e.getMessage().contains("trainguard.tensor.inspect-max-bytes"), e.getMessage());
    }

    @Test
    void inspect_tooManyTensors_refused() {
        // prevents: unbounded per-request work
        RawTensor t = f32("t", 1);
        TensorInputException e = assertThrows(TensorInputException.class,
                () -> inspector.inspect(List.of(t, t, t, t, t)));
        assertTrue(e.getMessage().contains("limit is 4"), e.getMessage());
    }

    @Test
    void inspect_shapeDisagreesWithBytes_refused() {
        // prevents: reading past the sent bytes when shape and data disagree
        RawTensor t = new RawTensor("t", TensorDType.F32, new long[] {3}, ByteBuffer.allocate(8));
        assertThrows(TensorInputException.class, () -> inspector.inspect(List.of(t)));
    }

    @Test
    void inspectSafetensors_blob_summarisesEachTensor() {
        // prevents: the blob path skipping header validation or misplacing tensor data
        byte[] blob = new SafetensorsWriter().f32("a", 1, 2).bf16("b", Float.NaN, 4).bytes();
        List<TensorSummary> s = inspector.inspectSafetensors(ByteBuffer.wrap(blob));
        assertEquals(2.0, s.get(0).max());
        assertEquals(1, s.get(1).nanCount());
        assertEquals(4.0, s.get(1).max());
    }
}
