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

/** `promtool check metrics` on the packaged sidecar's real /q/metrics, in both exposition formats. */
class MetricsFormatIT {

    @Test
    void promtoolCheckMetrics_prometheusTextAndOpenMetrics_bothPass(@TempDir Path dir) throws Exception {
        // prevents: a series name, type or histogram that Prometheus rejects or lints (found only in production)
        try (PackagedSidecar app = new PackagedSidecar(dir).start(); Sidecar client = new Sidecar(app.port)) {
            client.open("metrics-it", 0, 1);
            for (int s = 0; s < 5; s++) {
                client.report("metrics-it", 0, s, s == 3 ? Double.NaN : 2.0, 1.0);
            }
            HttpClient http = HttpClient.newHttpClient();
            for (String accept : new String[] {"text/plain; version=0.0.4", "application/openmetrics-text; version=1.0.0"}) {
                HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + app.port + "/q/metrics"))
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
                assertEquals(0, p.waitFor(), "promtool check metrics (" + accept + "):\n" + out);
            }
        }
    }
}
