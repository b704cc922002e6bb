package io.trainguard.reliability;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.trainguard.PackagedSidecar;
import io.trainguard.api.Sidecar;
import io.trainguard.api.grpc.v1.Action;
import io.trainguard.api.grpc.v1.CheckpointFile;
import io.trainguard.api.grpc.v1.CheckpointFormat;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import java.io.IOException;
import java.io.OutputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The packaged sidecar with its journal on a small tmpfs that fills up and frees again (root only:
 * CI runs as root; skipped with a message otherwise).
 */
class DiskFullIT {

    private static void sh(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        if (!p.waitFor(20, TimeUnit.SECONDS) || p.exitValue() != 0) {
            throw new IllegalStateException(String.join(" ", cmd) + " failed: " + out);
        }
    }

    private static String tail(PackagedSidecar s) throws IOException {
        String log = s.log();
        return log.substring(Math.max(0, log.length() - 4000));
    }

    private static String get(PackagedSidecar s, String path) throws Exception {
        int port = path.startsWith("/q/") ? s.managementPort : s.port;
        var r = HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + port + path))
                .timeout(Duration.ofSeconds(10)).build(), HttpResponse.BodyHandlers.ofString());
        return r.statusCode() + " " + r.body();
    }

    // Prevents: a full journal disk turning into a restart loop (liveness DOWN), 503 on read-only
    // views, and every commit failing "no transaction is active" after space returned.
    @Test
    void journalDiskFull_thenFreed_liveStaysUpReadsAnswerAndVerdictsRecoverWithoutRestart(@TempDir Path dir) throws Exception {
        Assumptions.assumeTrue("root".equals(System.getProperty("user.name")),
                "SKIPPED: needs root to mount a tmpfs (CI runs as root)");
        Path vol = Files.createDirectories(dir.resolve("vol"));
        sh("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", vol.toString());
        try (PackagedSidecar sidecar = new PackagedSidecar(dir).withJvmArgs("-Dtrainguard.journal.path=" + vol.resolve("journal.db"))
                .start(); Sidecar client = new Sidecar(sidecar.port)) {
            long pid = sidecar.pid();
            String run = Sidecar.newRunId("full");
            client.open(run, 0, 1);
            for (int s = 0; s < 20; s++) {
                client.report(run, 0, s, 2.0, 0.5);
            }
            Path filler = vol.resolve("filler");
            try (OutputStream out = Files.newOutputStream(filler)) {
                byte[] block = new byte[64 << 10];
                while (true) {
                    out.write(block);
                }
            } catch (IOException full) {
                // the volume is full
            }
            // SKIP verdicts must be durable: with no room they fail fast with UNAVAILABLE
            long step = 20;
            StatusRuntimeException refused = null;
            for (int i = 0; i < 2000 && refused == null; i++, step++) {
                try {
                    client.report(run, 0, step, Double.NaN, 0.5);
                    client.report(run, 0, ++step, 2.0, 0.5);
                } catch (StatusRuntimeException e) {
                    refused = e;
                }
            }
            assertTrue(refused != null, "the journal never ran out of space");
            assertEquals(Status.Code.UNAVAILABLE, refused.getStatus().getCode());
            // said as the sidecar's own answer, so a client does not send its operator to look for a network fault
            assertTrue(refused.getStatus().getDescription().startsWith("trainguard sidecar: "), refused.getStatus().toString());
            // a checkpoint registration the journal cannot record is UNAVAILABLE too, not an INTERNAL error
            StatusRuntimeException register = assertThrows(StatusRuntimeException.class, () -> client.withDeadline()
                    .registerCheckpoint(RegisterCheckpointRequest.newBuilder().setRunId(run).setRank(0).setStep(19)
                            .setFormat(CheckpointFormat.CHECKPOINT_FORMAT_MEMORY)
                            .addFiles(CheckpointFile.newBuilder().setPath("memory://full-test/rank0/slot0").setSizeBytes(1))
                            .build()));
            assertEquals(Status.Code.UNAVAILABLE, register.getStatus().getCode(), register.getStatus().toString());
            String ready = get(sidecar, "/q/health/ready");
            assertTrue(ready.startsWith("503") && ready.contains("disk full or read-only"), ready);
            String live = get(sidecar, "/q/health/live");
            assertTrue(live.startsWith("200"), "liveness tied to the disk: " + live);
            String list = get(sidecar, "/api/runs");
            assertTrue(list.startsWith("200"), list + "\n" + tail(sidecar));
            String view = get(sidecar, "/api/runs/" + run);
            assertTrue(view.startsWith("200"), "read-only view down with the journal: " + view + "\n" + tail(sidecar));
            Files.delete(filler);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
            while (!get(sidecar, "/q/health/ready").startsWith("200") && System.nanoTime() < deadline) {
                Thread.sleep(200);
            }
            assertTrue(get(sidecar, "/q/health/ready").startsWith("200"), "not ready after space returned");
            // verdicts are durable again, in the same process
            var v = client.report(run, 0, step + 10, Double.NaN, 0.5);
            assertTrue(v.getAction() == Action.ACTION_SKIP || v.getAction() == Action.ACTION_ROLLBACK
                    || v.getAction() == Action.ACTION_HALT, v.toString());
            assertEquals(pid, sidecar.pid());
            assertTrue(sidecar.alive());
        } finally {
            sh("umount", "-l", vol.toString());
        }
    }
}
