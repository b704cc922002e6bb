package io.trainguard.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.quarkus.test.junit.QuarkusTest;
import io.trainguard.api.grpc.v1.DType;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.IncidentKind;
import io.trainguard.api.grpc.v1.InspectTensorsRequest;
import io.trainguard.api.grpc.v1.RawTensor;
import io.trainguard.tensor.format.SafetensorsWriter;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import org.junit.jupiter.api.Test;

@QuarkusTest
class TensorForensicsTest extends SidecarTestSupport {

    private static ByteString f32(float... values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) {
            b.putFloat(v);
        }
        return ByteString.copyFrom(b.array());
    }

    @Test
    void inspectTensors_rawTensorWithNaN_countsIndicesStatsAndJournalsIncident() {
        // The summary people need after an incident: where the NaNs are and what the finite part looks like.
        String run = Sidecar.newRunId("forensics");
        sidecar.open(run, 0, 1);
        var response = sidecar.withDeadline().inspectTensors(InspectTensorsRequest.newBuilder().setRunId(run).setStep(7)
                .addTensors(RawTensor.newBuilder().setName("imageproj.out").setDtype(DType.D_TYPE_FLOAT32)
                        .addAllShape(List.of(2L, 3L)).setData(f32(1f, Float.NaN, 3f, Float.POSITIVE_INFINITY, -1f, Float.NaN)))
                .build());
        var s = response.getSummaries(0);
        assertEquals(2, s.getNanCount());
        assertEquals(1, s.getInfCount());
        assertEquals(List.of(1L, 3L, 5L), s.getFirstNonfiniteIndicesList());
        assertEquals(-1.0, s.getMin());
        assertEquals(3.0, s.getMax());
        assertEquals(1.0, s.getMean(), 1e-9);
        var incident = sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getIncidents(0);
        assertEquals(response.getIncidentId(), incident.getIncidentId());
        assertEquals(IncidentKind.INCIDENT_KIND_TENSOR_FORENSICS, incident.getKind());
        assertTrue(incident.getMessage().contains("imageproj.out"), incident.getMessage());
    }

    @Test
    void inspectTensors_safetensorsBlob_summarisesEveryTensor() {
        String run = Sidecar.newRunId("forensics-st");
        sidecar.open(run, 0, 1);
        byte[] blob = new SafetensorsWriter().f32("a", 1f, 2f).bf16("b", Float.NaN, 1f).bytes();
        var response = sidecar.withDeadline().inspectTensors(InspectTensorsRequest.newBuilder().setRunId(run)
                .setSafetensors(ByteString.copyFrom(blob)).build());
        assertEquals(2, response.getSummariesCount());
        assertEquals(1, response.getSummariesList().stream().mapToLong(x -> x.getNanCount()).sum());
    }

    @Test
    void inspectTensors_dataShorterThanShape_invalidArgument() {
        String run = Sidecar.newRunId("forensics-bad");
        sidecar.open(run, 0, 1);
        var e = assertThrows(StatusRuntimeException.class, () -> sidecar.withDeadline().inspectTensors(InspectTensorsRequest
                .newBuilder().setRunId(run).addTensors(RawTensor.newBuilder().setName("x").setDtype(DType.D_TYPE_FLOAT32)
                        .addShape(10).setData(f32(1f))).build()));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
    }
}
