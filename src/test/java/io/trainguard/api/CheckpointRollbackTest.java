package io.trainguard.api;

import static io.restassured.RestAssured.given;
import static org.hamcrest.Matchers.equalTo;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.quarkus.test.junit.QuarkusTest;
import io.trainguard.api.grpc.v1.Action;
import io.trainguard.api.grpc.v1.CheckpointFile;
import io.trainguard.api.grpc.v1.CheckpointFormat;
import io.trainguard.api.grpc.v1.CheckpointState;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.Policy;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import io.trainguard.tensor.format.SafetensorsWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

@QuarkusTest
class CheckpointRollbackTest extends SidecarTestSupport {
    private static final Path ROOT = Path.of("target/test-classes/checkpoints").toAbsolutePath();

    private CheckpointState waitFor(String run, CheckpointState wanted) throws InterruptedException {
        CheckpointState state = CheckpointState.CHECKPOINT_STATE_UNSPECIFIED;
        for (int i = 0; i < 100 && state != wanted; i++) {
            var cps = sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getCheckpointsList();
            state = cps.isEmpty() ? state : cps.get(0).getState();
            Thread.sleep(50);
        }
        return state;
    }

    @Test
    void rollback_afterVerifiedCheckpointAndHealthySteps_targetsKnownGoodCheckpoint() throws Exception {
        // Rollback only ever targets a checkpoint that verified clean AND was followed by healthy steps.
        String run = Sidecar.newRunId("rollback");
        sidecar.withDeadline().openRun(OpenRunRequest.newBuilder().setRunId(run).setWorldSize(1)
                .setPolicy(Policy.newBuilder().setKnownGoodHealthySteps(5)).build());
        for (int s = 0; s <= 10; s++) {
            sidecar.report(run, 0, s, 2.0, 0.5);
        }
        Path file = new SafetensorsWriter().f32("w", 1f, 2f, 3f).bf16("b", 0.5f).write(ROOT.resolve(run + "-10.safetensors"));
        var registered = sidecar.withDeadline().registerCheckpoint(RegisterCheckpointRequest.newBuilder().setRunId(run)
                .setStep(10).setDataPosition(10).setFormat(CheckpointFormat.CHECKPOINT_FORMAT_SAFETENSORS)
                .addFiles(CheckpointFile.newBuilder().setPath(file.toString())).build()).getCheckpoint();
        assertEquals(CheckpointState.CHECKPOINT_STATE_VERIFIED, waitFor(run, CheckpointState.CHECKPOINT_STATE_VERIFIED));
        for (int s = 11; s <= 16; s++) {
            sidecar.report(run, 0, s, 2.0, 0.5);
        }
        assertEquals(CheckpointState.CHECKPOINT_STATE_KNOWN_GOOD, waitFor(run, CheckpointState.CHECKPOINT_STATE_KNOWN_GOOD));
        for (int s = 17; s < 20; s++) {
            assertEquals(Action.ACTION_SKIP, sidecar.report(run, 0, s, Double.NaN, 0.5).getAction());
        }
        var verdict = sidecar.report(run, 0, 20, Double.NaN, 0.5);
        assertEquals(Action.ACTION_ROLLBACK, verdict.getAction());
        assertEquals(registered.getCheckpointId(), verdict.getRollback().getCheckpointId());
        assertEquals(10, verdict.getRollback().getCheckpointStep());
        assertEquals(10, verdict.getRollback().getSkipBatches());
        assertEquals(file.toString(), verdict.getRollback().getFiles(0));
        given().get("/api/runs/" + run + "/checkpoints").then().statusCode(200)
                .body("[0].state", equalTo("KNOWN_GOOD")).body("[0].verifyPercent", equalTo(100.0f));
    }

    @Test
    void registerCheckpoint_nonFiniteTensor_rejectedAndNeverTargeted() throws Exception {
        String run = Sidecar.newRunId("badckpt");
        sidecar.open(run, 0, 1);
        Path file = new SafetensorsWriter().f32("w", 1f, Float.NaN, 3f).write(ROOT.resolve(run + ".safetensors"));
        sidecar.withDeadline().registerCheckpoint(RegisterCheckpointRequest.newBuilder().setRunId(run).setStep(0)
                .setFormat(CheckpointFormat.CHECKPOINT_FORMAT_SAFETENSORS)
                .addFiles(CheckpointFile.newBuilder().setPath(file.toString())).build());
        assertEquals(CheckpointState.CHECKPOINT_STATE_REJECTED, waitFor(run, CheckpointState.CHECKPOINT_STATE_REJECTED));
        var reason = sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getCheckpoints(0).getStateReason();
        assertTrue(reason.contains("w"), reason);
    }

    @Test
    void registerCheckpoint_outsideRoots_invalidArgumentNamingRoots() throws Exception {
        String run = Sidecar.newRunId("escape");
        sidecar.open(run, 0, 1);
        Path outside = Files.createTempFile("outside", ".safetensors");
        var e = assertThrows(StatusRuntimeException.class, () -> sidecar.withDeadline().registerCheckpoint(
                RegisterCheckpointRequest.newBuilder().setRunId(run).setStep(0).setFormat(CheckpointFormat.CHECKPOINT_FORMAT_SAFETENSORS)
                        .addFiles(CheckpointFile.newBuilder().setPath(outside.toString())).build()));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
        assertTrue(e.getStatus().getDescription().contains("checkpoints"), e.getStatus().getDescription());
        Files.delete(outside);
    }
}
