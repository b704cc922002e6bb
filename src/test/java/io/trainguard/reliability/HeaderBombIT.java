package io.trainguard.reliability;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.PackagedSidecar;
import io.trainguard.api.Sidecar;
import io.trainguard.api.grpc.v1.Checkpoint;
import io.trainguard.api.grpc.v1.CheckpointFile;
import io.trainguard.api.grpc.v1.CheckpointFormat;
import io.trainguard.api.grpc.v1.CheckpointState;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import java.io.BufferedOutputStream;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Safetensors files whose JSON header lists over a million tiny tensors, against the packaged
 * sidecar with the container image's JVM flags and the heap a 1 GiB memory limit gives it.
 */
class HeaderBombIT {
    /** Dockerfile.jvm's JAVA_TOOL_OPTIONS under a 1 GiB limit (MaxRAMPercentage=50). */
    static final String[] CONTAINER_JVM = {"-Xmx512m", "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError"};

    /** Writes {@code tensors} one-byte U8 tensors: the header is ~68 bytes per tensor. */
    static Path bomb(Path file, int tensors) throws Exception {
        StringBuilder json = new StringBuilder(tensors * 70).append('{');
        for (int i = 0; i < tensors; i++) {
            if (i > 0) {
                json.append(',');
            }
            json.append("\"t").append(i).append("\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[")
                    .append(i).append(',').append(i + 1).append("]}");
        }
        byte[] header = json.append('}').toString().getBytes(StandardCharsets.UTF_8);
        try (OutputStream out = new BufferedOutputStream(Files.newOutputStream(file), 1 << 20)) {
            out.write(ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(header.length).array());
            out.write(header);
            out.write(new byte[tensors]);
        }
        return file;
    }

    static Checkpoint settled(Sidecar client, String run, long step) throws InterruptedException {
        for (int i = 0; i < 600; i++) {
            for (Checkpoint c : client.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getCheckpointsList()) {
                if (c.getStep() == step && c.getState() != CheckpointState.CHECKPOINT_STATE_VERIFYING
                        && c.getState() != CheckpointState.CHECKPOINT_STATE_REGISTERED) {
                    return c;
                }
            }
            Thread.sleep(100);
        }
        throw new AssertionError("checkpoint at step " + step + " never settled");
    }

    static void register(Sidecar client, String run, long step, Path file) {
        client.withDeadline().registerCheckpoint(RegisterCheckpointRequest.newBuilder().setRunId(run).setStep(step)
                .setFormat(CheckpointFormat.CHECKPOINT_FORMAT_SAFETENSORS)
                .addFiles(CheckpointFile.newBuilder().setPath(file.toString())).build());
    }

    // Prevents: the crash loop where a 98 MiB header (1.45 M tensors) ran a 1 GiB sidecar out of
    // heap 0.5 s after registration, and again at every restart before it was ready.
    @Test
    void registerCheckpoint_headerBombs_rejectedWithReasonSidecarStaysUpAndRestartsReady(@TempDir Path dir) throws Exception {
        Path roots = Files.createDirectories(dir.resolve("ckpt"));
        Path big = bomb(roots.resolve("bomb-98mib.safetensors"), 1_450_000);
        Path many = bomb(roots.resolve("bomb-400k.safetensors"), 400_000);
        String run = "header-bomb";
        try (PackagedSidecar sidecar = new PackagedSidecar(dir).withJvmArgs(CONTAINER_JVM)
                .withJvmArgs("-Dtrainguard.checkpoint.roots=" + roots).start(); Sidecar client = new Sidecar(sidecar.port)) {
            client.open(run, 0, 1);
            register(client, run, 10, big);
            Checkpoint c = settled(client, run, 10);
            assertEquals(CheckpointState.CHECKPOINT_STATE_REJECTED, c.getState(), c.getStateReason());
            assertTrue(c.getStateReason().contains("header length"), c.getStateReason());
            register(client, run, 20, many);
            c = settled(client, run, 20);
            assertEquals(CheckpointState.CHECKPOINT_STATE_REJECTED, c.getState(), c.getStateReason());
            assertTrue(c.getStateReason().contains("tensors"), c.getStateReason());
            assertTrue(sidecar.alive(), "sidecar died: " + sidecar.log());
            assertEquals(200, sidecar.status("/q/health/live"));
            // a bomb queued when the sidecar is killed: the next start is ready and settles it
            register(client, run, 30, many);
            sidecar.killHard();
        }
        try (PackagedSidecar again = new PackagedSidecar(dir).withJvmArgs(CONTAINER_JVM)
                .withJvmArgs("-Dtrainguard.checkpoint.roots=" + roots).start(); Sidecar client = new Sidecar(again.port)) {
            Checkpoint c = settled(client, run, 30);
            assertTrue(c.getState() == CheckpointState.CHECKPOINT_STATE_REJECTED
                    || c.getState() == CheckpointState.CHECKPOINT_STATE_UNVERIFIABLE, c.getState() + " " + c.getStateReason());
            assertTrue(again.alive());
            assertEquals(200, again.status("/q/health/ready"));
        }
    }
}
