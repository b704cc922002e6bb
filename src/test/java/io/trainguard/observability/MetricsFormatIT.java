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

/**
 * The packaged sidecar's real /q/metrics in both exposition formats: `promtool check metrics` on the
 * Prometheus text format, scripts/check-openmetrics.py (strict OpenMetrics parser) on OpenMetrics.
 */
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

    /** Runs a checker with the body on stdin; returns exit status and output. */
    private static String[] check(String body, String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        p.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
        p.getOutputStream().close();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        return new String[] {String.valueOf(p.waitFor()), out};
    }

    private static HttpResponse<String> scrape(PackagedSidecar app, String accept) throws Exception {
        HttpRequest.Builder r = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + app.managementPort + "/q/metrics"));
        if (accept != null) {
            r.header("Accept", accept);
        }
        HttpResponse<String> res = HttpClient.newHttpClient().send(r.build(), HttpResponse.BodyHandlers.ofString());
        assertEquals(200, res.statusCode(), "Accept: " + accept);
        assertTrue(res.body().contains("trainguard_skips_total"), accept + ": no trainguard series");
        return res;
    }

    @Test
    void promtoolCheckMetrics_bothExpositionFormats_parseAndTrainguardSeriesLintClean(@TempDir Path dir) throws Exception {
        // prevents: a series name, type or histogram that Prometheus rejects or lints (found only in
        // production), and an OpenMetrics scraper refused with 406 or fed the text format
        try (PackagedSidecar app = new PackagedSidecar(dir).start(); Sidecar client = new Sidecar(app.port)) {
            openWithRetry(client); // a freshly started sidecar on a loaded machine may miss the first deadline
            for (int s = 0; s < 5; s++) {
                client.report("metrics-it", 0, s, s == 3 ? Double.NaN : 2.0, 1.0);
            }
            // Prometheus text: what text/plain asks for, and what Prometheus 2.x's own scrape header gets.
            for (String accept : new String[] {"text/plain; version=0.0.4",
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"}) {
                HttpResponse<String> r = scrape(app, accept);
                assertTrue(r.headers().firstValue("Content-Type").orElse("").startsWith("text/plain"), accept);
                String[] rc = check(r.body(), "promtool", "check", "metrics");
                // 0 = clean; 3 = parsed, with lint remarks. Lint remarks on Quarkus/Micrometer's own
                // binders (netty_*, process_cpu_time_ns, system_cpu_count) are not ours to rename;
                // any on a trainguard_ series, or a parse failure (1), fails the test.
                assertTrue(rc[0].equals("0") || rc[0].equals("3"), "promtool check metrics (" + accept + ") could not parse it:\n" + rc[1]);
                assertTrue(rc[1].lines().noneMatch(l -> l.startsWith("trainguard_")), "promtool lint on trainguard series (" + accept + "):\n" + rc[1]);
            }
            // OpenMetrics 1.0: with and without the charset parameter (OpenMetricsAccept), and with no
            // Accept header at all (Quarkus' default). promtool cannot parse OpenMetrics
            // (prometheus/prometheus#8932): the Prometheus Python client's strict parser checks it.
            for (String accept : new String[] {"application/openmetrics-text; version=1.0.0",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8", "application/openmetrics-text", null}) {
                HttpResponse<String> r = scrape(app, accept);
                assertEquals("application/openmetrics-text; version=1.0.0; charset=utf-8",
                        r.headers().firstValue("Content-Type").orElse(""), "Accept: " + accept);
                assertTrue(r.body().endsWith("# EOF\n"), "OpenMetrics must end with # EOF (Accept: " + accept + ")");
                String[] rc = check(r.body(), System.getenv().getOrDefault("OPENMETRICS_PYTHON", "/usr/bin/python3"),
                        "scripts/check-openmetrics.py", "trainguard_");
                assertEquals("0", rc[0], "OpenMetrics check (Accept: " + accept + "):\n" + rc[1]);
            }
        }
    }
}
