package io.trainguard.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.trainguard.PackagedSidecar;
import io.trainguard.api.grpc.v1.Checkpoint;
import io.trainguard.api.grpc.v1.CheckpointFile;
import io.trainguard.api.grpc.v1.CheckpointFormat;
import io.trainguard.api.grpc.v1.CheckpointState;
import io.trainguard.api.grpc.v1.CheckpointTensorSummary;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.IncidentKind;
import io.trainguard.api.grpc.v1.InspectCheckpointRequest;
import io.trainguard.api.grpc.v1.InspectCheckpointResponse;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Checkpoint forensics (InspectCheckpoint, DJL) against the packaged sidecar, on a diverged training
 * state written by real torch as torch.save, DCP and safetensors: every figure is compared with
 * what torch computed for the same tensor (expected.json). Chunks of 4096 elements make rows span
 * chunks and chunks span rows, so the merging is exercised on small files.
 */
class CheckpointForensicsIT {
    static Path dir;
    static Path root;
    static JsonNode expected;
    static PackagedSidecar sidecar;
    static Sidecar client;
    static final String RUN = "forensics-it";
    static long step;

    @BeforeAll
    static void start() throws Exception {
        dir = Files.createTempDirectory("forensics-it");
        root = Files.createDirectories(dir.resolve("ckpt"));
        Process p = new ProcessBuilder("/opt/trainguard-venv/bin/python",
                Path.of("src/test/resources/torch/write_forensics_checkpoints.py").toAbsolutePath().toString(),
                root.toString()).redirectErrorStream(true).redirectOutput(dir.resolve("writer.log").toFile()).start();
        assertEquals(0, p.waitFor(), () -> read(dir.resolve("writer.log")));
        expected = new ObjectMapper().readTree(root.resolve("expected.json").toFile());
        sidecar = new PackagedSidecar(dir).with("trainguard.checkpoint.roots", root.toString())
                .with("trainguard.tensor.forensics-chunk-elements", "4096").start();
        client = new Sidecar(sidecar.port);
        client.open(RUN, 0, 1);
    }

    @AfterAll
    static void stop() throws Exception {
        if (client != null) {
            client.close();
        }
        if (sidecar != null) {
            sidecar.close();
        }
        if (dir != null) { // the checkpoints and the sidecar's journal: megabytes per run
            try (var files = Files.walk(dir)) {
                files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
            }
        }
    }

    static String read(Path p) {
        try {
            return Files.readString(p);
        } catch (Exception e) {
            return e.toString();
        }
    }

    static Checkpoint registerAndSettle(CheckpointFormat format, Path path) throws InterruptedException {
        long s = ++step;
        client.withDeadline().registerCheckpoint(RegisterCheckpointRequest.newBuilder().setRunId(RUN).setStep(s)
                .setFormat(format).addFiles(CheckpointFile.newBuilder().setPath(path.toString())).build());
        for (int i = 0; i < 600; i++) {
            for (Checkpoint c : client.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(RUN).build())
                    .getCheckpointsList()) {
                if (c.getStep() == s && c.getState() != CheckpointState.CHECKPOINT_STATE_REGISTERED
                        && c.getState() != CheckpointState.CHECKPOINT_STATE_VERIFYING) {
                    return c;
                }
            }
            Thread.sleep(100);
        }
        throw new AssertionError("checkpoint at step " + s + " never settled");
    }

    static InspectCheckpointResponse inspect(String checkpointId, String... tensors) {
        return client.stub.withDeadlineAfter(60, TimeUnit.SECONDS).inspectCheckpoint(InspectCheckpointRequest
                .newBuilder().setRunId(RUN).setCheckpointId(checkpointId).addAllTensors(List.of(tensors)).build());
    }

    /** DCP names a tensor by its chunk ("model.w[0, 0]"); the tensor itself is what precedes "[". */
    static Map<String, CheckpointTensorSummary> byName(InspectCheckpointResponse r) {
        Map<String, CheckpointTensorSummary> m = new HashMap<>();
        r.getTensorsList().forEach(t -> m.put(t.getSummary().getName().replaceFirst("\\[.*$", ""), t));
        return m;
    }

    static void assertMatchesTorch(String name, CheckpointTensorSummary t) {
        JsonNode e = expected.get(name);
        var s = t.getSummary();
        assertEquals(e.get("nan").asLong(), s.getNanCount(), name + " nan");
        assertEquals(e.get("inf").asLong(), s.getInfCount(), name + " inf");
        List<Long> first = new java.util.ArrayList<>();
        e.get("first").forEach(x -> first.add(x.asLong()));
        assertEquals(first, s.getFirstNonfiniteIndicesList(), name + " first non-finite indices");
        for (String k : List.of("min", "max", "mean", "std")) {
            double want = e.get(k).asDouble();
            double got = switch (k) {
                case "min" -> s.getMin();
                case "max" -> s.getMax();
                case "mean" -> s.getMean();
                default -> s.getStd();
            };
            assertEquals(want, got, 1e-9 * Math.max(1, Math.abs(want)), name + " " + k);
        }
        assertEquals(e.get("unit").asText(), t.getUnit(), name + " unit");
        assertEquals(e.get("unit_elements").asLong(), t.getUnitElements(), name + " unit elements");
        assertEquals(e.get("units").asLong(), t.getNonfiniteUnits(), name + " non-finite units");
        List<Long> units = new java.util.ArrayList<>();
        e.get("first_units").forEach(x -> units.add(x.asLong()));
        assertEquals(units, t.getFirstNonfiniteUnitsList(), name + " first non-finite units");
    }

    @Test
    void inspectCheckpoint_rejectedTorchSave_locatesNaNsAndMatchesTorchStats() throws Exception {
        // prevents: a rejected torch.save checkpoint that can be refused but not explained (which
        // tensor, which index, which rows), or statistics that disagree with torch's own
        Checkpoint c = registerAndSettle(CheckpointFormat.CHECKPOINT_FORMAT_TORCH_PICKLE, root.resolve("state.pt"));
        assertEquals(CheckpointState.CHECKPOINT_STATE_REJECTED, c.getState(), c.getStateReason());
        InspectCheckpointResponse r = inspect(c.getCheckpointId());
        Map<String, CheckpointTensorSummary> m = byName(r);
        for (String name : List.of("model.w", "model.wt", "model.ws", "model.b16", "model.clean",
                "optimizer.state.0.exp_avg_sq")) {
            assertTrue(m.containsKey(name), name + " missing from " + m.keySet());
            assertMatchesTorch(name, m.get(name));
        }
        assertEquals("model.w", r.getTensors(0).getSummary().getName(), "the most non-finite tensor comes first");
        assertEquals(37L * 8192 + 5, r.getTensors(0).getSummary().getFirstNonfiniteIndices(0));
        var incident = client.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(RUN).build()).getIncidentsList()
                .stream().filter(i -> i.getIncidentId() == r.getIncidentId()).findFirst().orElseThrow();
        assertEquals(IncidentKind.INCIDENT_KIND_TENSOR_FORENSICS, incident.getKind());
        assertTrue(incident.getMessage().contains("state.pt:model.w") && incident.getMessage().contains("rows=[37, 50]"),
                incident.getMessage());
    }

    @Test
    void inspectCheckpoint_rejectedDcpDirectory_readsChunksThroughMetadata() throws Exception {
        // prevents: DCP checkpoints left without forensics because their tensors sit in .distcp shards
        Checkpoint c = registerAndSettle(CheckpointFormat.CHECKPOINT_FORMAT_TORCH_PICKLE, root.resolve("dcp"));
        assertEquals(CheckpointState.CHECKPOINT_STATE_REJECTED, c.getState(), c.getStateReason());
        Map<String, CheckpointTensorSummary> m = byName(inspect(c.getCheckpointId()));
        assertEquals(java.util.Set.of("model.w", "model.wt", "model.ws", "model.b16", "model.clean"), m.keySet());
        m.forEach(CheckpointForensicsIT::assertMatchesTorch);
        assertEquals("__0_0.distcp", m.get("model.w").getFile());
    }

    @Test
    void inspectCheckpoint_rejectedSafetensorsNamedTensor_onlyThatTensor() throws Exception {
        // prevents: a request for one tensor of a large checkpoint paying for all of them
        Checkpoint c = registerAndSettle(CheckpointFormat.CHECKPOINT_FORMAT_SAFETENSORS, root.resolve("model.safetensors"));
        assertEquals(CheckpointState.CHECKPOINT_STATE_REJECTED, c.getState(), c.getStateReason());
        InspectCheckpointResponse all = inspect(c.getCheckpointId());
        byName(all).forEach(CheckpointForensicsIT::assertMatchesTorch);
        InspectCheckpointResponse one = inspect(c.getCheckpointId(), "model.b*");
        assertEquals(1, one.getTensorsCount());
        assertMatchesTorch("model.b16", one.getTensors(0));
        assertEquals(10000L * 2, one.getBytesInspected());
    }

    @Test
    void forensicsRest_rejectedCheckpoint_sameReportAsJson() throws Exception {
        // prevents: forensics reachable only from gRPC, not from the operator's curl
        Checkpoint c = registerAndSettle(CheckpointFormat.CHECKPOINT_FORMAT_SAFETENSORS, root.resolve("model.safetensors"));
        HttpResponse<String> r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:"
                + sidecar.port + "/api/runs/" + RUN + "/checkpoints/" + c.getCheckpointId() + "/forensics"))
                .header("Content-Type", "application/json").POST(HttpRequest.BodyPublishers.ofString("{\"tensors\":[\"model.w\"]}"))
                .build(), HttpResponse.BodyHandlers.ofString());
        assertEquals(200, r.statusCode(), r.body());
        JsonNode t = new ObjectMapper().readTree(r.body()).get("tensors").get(0);
        assertEquals("model.w", t.get("summary").get("name").asText());
        assertEquals(37L * 8192 + 5, t.get("summary").get("firstNonFiniteIndices").get(0).asLong());
        assertEquals("[37,50]", t.get("firstNonFiniteUnits").toString());
    }

    @Test
    void inspectCheckpoint_badRequests_clearStatusesAndSidecarKeepsServing() throws Exception {
        // prevents: a forensics request on a checkpoint it cannot read failing as INTERNAL or hanging
        Checkpoint c = registerAndSettle(CheckpointFormat.CHECKPOINT_FORMAT_SAFETENSORS, root.resolve("model.safetensors"));
        var none = assertThrows(StatusRuntimeException.class, () -> inspect(c.getCheckpointId(), "no.such.tensor"));
        assertEquals(Status.Code.INVALID_ARGUMENT, none.getStatus().getCode());
        assertTrue(none.getStatus().getDescription().contains("model.w"), none.getStatus().getDescription());
        var unknown = assertThrows(StatusRuntimeException.class, () -> inspect("ckpt-does-not-exist"));
        assertEquals(Status.Code.NOT_FOUND, unknown.getStatus().getCode());
        Checkpoint legacy = registerAndSettle(CheckpointFormat.CHECKPOINT_FORMAT_TORCH_PICKLE, root.resolve("legacy.pt"));
        assertEquals(CheckpointState.CHECKPOINT_STATE_UNVERIFIABLE, legacy.getState(), legacy.getStateReason());
        var unreadable = assertThrows(StatusRuntimeException.class, () -> inspect(legacy.getCheckpointId()));
        assertEquals(Status.Code.FAILED_PRECONDITION, unreadable.getStatus().getCode());
        assertTrue(unreadable.getStatus().getDescription().contains("UNVERIFIABLE"), unreadable.getStatus().getDescription());
        assertEquals(1, inspect(c.getCheckpointId(), "model.clean").getTensorsCount());
    }
}
