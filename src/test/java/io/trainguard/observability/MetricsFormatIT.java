package io.trainguard.observability;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.PackagedSidecar;
import io.trainguard.api.Sidecar;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** `promtool check metrics` on the packaged sidecar's real /q/metrics (Prometheus text format). */
class MetricsFormatIT {

    private static void openWithRetry(Sidecar client) throws InterruptedException {
        long giveUp = System.nanoTime() + java.util.concurrent.TimeUnit.SECONDS.toNanos(90);
        while (true) {
            try {
                client.open("metrics-it", 0, 1);
                return;
            } catch (io.grpc.StatusRuntimeException e) {
                if (e.getStatus().getCode() != io.grpc.Status.Code.DEADLINE_EXCEEDED || System.nanoTime() > giveUp) {
                    throw e;
                }
                Thread.sleep(500);
            }
        }
    }

    @Test
    void promtoolCheckMetrics_prometheusText_parsesAndTrainguardSeriesLintClean(@TempDir Path dir) throws Exception {
        // prevents: a series name, type or histogram that Prometheus rejects or lints (found only in production)
        try (PackagedSidecar app = new PackagedSidecar(dir).start(); Sidecar client = new Sidecar(app.port)) {
            openWithRetry(client); // a freshly started sidecar on a loaded machine may miss the first deadline
            for (int s = 0; s < 5; s++) {
                client.report("metrics-it", 0, s, s == 3 ? Double.NaN : 2.0, 1.0);
            }
            HttpClient http = HttpClient.newHttpClient();
            // OpenMetrics is not checked: this Quarkus/Micrometer registry answers 406 to an
            // openmetrics Accept header (docs/operations.md says so); the Prometheus text format is.
            for (String accept : new String[] {"text/plain; version=0.0.4"}) {
                HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + app.managementPort + "/q/metrics"))
                        .header("Accept", accept).build(), HttpResponse.BodyHandlers.ofString());
                assertEquals(200, r.statusCode());
                assertTrue(r.body().contains("trainguard_skips_total"), accept + ": no trainguard series");
                if (accept.startsWith("application/openmetrics")) {
                    assertTrue(r.headers().firstValue("Content-Type").orElse("").contains("openmetrics"),
                            "asked for OpenMetrics, got " + r.headers().firstValue("Content-Type"));
                    assertTrue(r.body().strip().endsWith("# EOF"), "OpenMetrics must end with # EOF");
                }
                Process p = new ProcessBuilder("promtool", "check", "metrics").redirectErrorStream(true).start();
                p.getOutputStream().write(r.body().getBytes(StandardCharsets.UTF_8));
                p.getOutputStream().close();
                String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
                int rc = p.waitFor();
                // 0 = clean; 3 = parsed, with lint remarks. Lint remarks on Quarkus/Micrometer's own
                // binders (netty_*, process_cpu_time_ns, system_cpu_count) are not ours to rename;
                // any on a trainguard_ series, or a parse failure (1), fails the test.
                assertTrue(rc == 0 || rc == 3, "promtool check metrics (" + accept + ") could not parse it:\n" + out);
                assertTrue(out.lines().noneMatch(l -> l.startsWith("trainguard_")),
                        "promtool lint on trainguard series (" + accept + "):\n" + out);
            }
        }
    }
}
