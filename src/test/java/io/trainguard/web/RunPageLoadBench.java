package io.trainguard.web;

import io.trainguard.PackagedSidecar;
import io.trainguard.api.Sidecar;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.StepRecord;
import io.trainguard.store.SqliteJournal;
import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.openqa.selenium.By;
import org.openqa.selenium.chrome.ChromeDriver;
import org.openqa.selenium.chrome.ChromeDriverService;
import org.openqa.selenium.chrome.ChromeOptions;

/**
 * Load time of the run page (/runs/{id}) for a run of N steps (default 10^6) in headless Chromium,
 * measured with the browser's Navigation Timing, for docs/benchmarks.md: bench/history/page-load.sh.
 *
 * <p>The run is opened over real gRPC on the packaged jar; its remaining steps are then appended to
 * the same journal with the real journal writer while the sidecar is stopped (streaming 10^6 steps
 * over gRPC takes minutes here), and the sidecar is restarted on that journal, as after a node
 * restart. Measures the page opened the moment the sidecar is ready (the history rollup of all rows
 * is still being built), opened after the history warmer (config/HistoryWarmer) had its time, and
 * reloads. Writes the result to target/bench/run-page-load.txt.
 */
public final class RunPageLoadBench {
    static final String RUN = "bench-1m";
    static final String SMALL = "bench-10";

    public static void main(String[] args) throws Exception {
        int steps = Integer.getInteger("steps", 1_000_000);
        int loads = Integer.getInteger("loads", 15);
        Path dir = Files.createTempDirectory("tg-page-bench");
        String loadBefore = Files.readString(Path.of("/proc/loadavg")).trim();

        try (PackagedSidecar first = new PackagedSidecar(dir).start(); Sidecar client = new Sidecar(first.port)) {
            for (int attempt = 1; ; attempt++) { // a fresh JVM on a loaded machine may miss the first deadline
                try {
                    client.open(RUN, 0, 1);
                    break;
                } catch (io.grpc.StatusRuntimeException e) {
                    if (attempt == 10) {
                        throw e;
                    }
                    Thread.sleep(1000);
                }
            }
            client.report(RUN, 0, 0, 2.0, 1.0);
            client.open(SMALL, 0, 1); // a 10-step run: the fresh JVM's first page render, for comparison
            for (int s = 0; s < 10; s++) {
                client.report(SMALL, 0, s, 2.0, 1.0);
            }
        }
        long t0 = System.nanoTime();
        try (SqliteJournal journal = new SqliteJournal(dir.resolve("journal.db"), "OFF", 64)) {
            List<StepRecord> batch = new ArrayList<>();
            Instant t = Instant.now();
            for (int s = 1; s < steps; s++) {
                boolean nan = s % 100_003 == 0;
                double loss = nan ? Double.NaN : 2 + Math.sin(s / 999.0) + (s % 250_000 == 0 ? 40 : 0);
                Action a = nan ? Action.SKIP : s % 250_000 == 0 ? Action.CLIP : Action.APPLY;
                batch.add(new StepRecord(RUN, 0, s, loss, 1.0 + (s % 7) * 0.01, 1e-3, 65536, a, 5, t));
                if (batch.size() == 50_000) {
                    journal.write(new JournalWrite(null, List.copyOf(batch), List.of(), true)).get(120, TimeUnit.SECONDS);
                    batch.clear();
                }
            }
            journal.write(new JournalWrite(null, List.copyOf(batch), List.of(), true)).get(120, TimeUnit.SECONDS);
        }
        double seedSeconds = (System.nanoTime() - t0) / 1e9;

        int warmupSeconds = Integer.getInteger("warmup", 20);
        ChromeDriver browser = null;
        try {
            ChromeOptions options = new ChromeOptions();
            options.setBinary(System.getenv().getOrDefault("CHROMIUM", "/usr/bin/chromium"));
            options.addArguments("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400");
            browser = new ChromeDriver(new ChromeDriverService.Builder()
                    .usingDriverExecutable(new File(System.getenv().getOrDefault("CHROMEDRIVER", "/usr/bin/chromedriver")))
                    .usingAnyFreePort().build(), options);
            browser.manage().timeouts().pageLoadTimeout(Duration.ofSeconds(120));
            browser.manage().timeouts().scriptTimeout(Duration.ofSeconds(30));

            // 1. The page opened the moment the restarted sidecar is ready: the rollup is still being built.
            double[] cold;
            try (PackagedSidecar app = new PackagedSidecar(dir).start()) {
                cold = load(browser, url(app));
            }
            // 2. Restarted, then opened after the history warmer had warmupSeconds; then refreshed.
            double[] first;
            double[] small;
            double[] server = new double[loads];
            double[] full = new double[loads];
            int points;
            long htmlBytes;
            String lastStep;
            try (PackagedSidecar app = new PackagedSidecar(dir).start()) {
                Thread.sleep(warmupSeconds * 1000L);
                small = load(browser, url(app).replace(RUN, SMALL));
                first = load(browser, url(app));
                String d = browser.findElement(By.id("loss-chart")).findElement(By.cssSelector("path.mean")).getAttribute("d");
                points = d.split("L").length;
                htmlBytes = ((Number) browser.executeScript(
                        "return performance.getEntriesByType('navigation')[0].decodedBodySize")).longValue();
                lastStep = browser.findElement(By.tagName("body")).getText().contains(String.valueOf(steps - 1)) ? "yes" : "no";
                for (int i = 0; i < loads; i++) {
                    double[] m = load(browser, url(app));
                    server[i] = m[0];
                    full[i] = m[1];
                }
            }
            Arrays.sort(server);
            Arrays.sort(full);
            String loadAfter = Files.readString(Path.of("/proc/loadavg")).trim();
            String report = String.format(
                    "run page /runs/%s, %d steps (seeded in %.1f s)%n"
                            + "loss curve: %d points; HTML %d bytes; last step %d on the page: %s%n"
                            + "opened as the restarted sidecar turns ready (rollup still being built): request->responseEnd %.0f ms, navigation->loadEventEnd %.0f ms%n"
                            + "%d s after a restart: first page the JVM renders (10-step run): request->responseEnd %.0f ms, navigation->loadEventEnd %.0f ms%n"
                            + "  then the first open of the %d-step run: request->responseEnd %.0f ms, navigation->loadEventEnd %.0f ms%n"
                            + "then %d reloads, request->responseEnd: median %.0f ms (min %.0f, max %.0f)%n"
                            + "then %d reloads, navigation->loadEventEnd: median %.0f ms (min %.0f, max %.0f)%n"
                            + "machine: %s, %d cores; date %s; load average before %s, after %s%n",
                    RUN, steps, seedSeconds, points, htmlBytes, steps - 1, lastStep, cold[0], cold[1],
                    warmupSeconds, small[0], small[1], steps, first[0], first[1],
                    loads, server[loads / 2], server[0], server[loads - 1], loads, full[loads / 2], full[0], full[loads - 1],
                    cpuModel(), Runtime.getRuntime().availableProcessors(), Instant.now(), loadBefore, loadAfter);
            System.out.print(report);
            Files.createDirectories(Path.of("target", "bench"));
            Files.writeString(Path.of("target", "bench", "run-page-load.txt"), report);
        } finally {
            if (browser != null) {
                browser.quit();
            }
        }
    }

    private static String url(PackagedSidecar app) {
        return "http://127.0.0.1:" + app.port + "/runs/" + RUN;
    }

    /** One navigation; [requestStart..responseEnd, startTime..loadEventEnd] in ms from Navigation Timing. */
    @SuppressWarnings("unchecked")
    private static double[] load(ChromeDriver browser, String url) {
        browser.get(url);
        // get() returns at readyState "complete", which can precede loadEventEnd: wait for it.
        Map<String, Object> t = (Map<String, Object>) browser.executeAsyncScript(
                "var done = arguments[arguments.length - 1];"
                        + "(function poll() { var n = performance.getEntriesByType('navigation')[0];"
                        + "  if (n && n.loadEventEnd > 0) done({server: n.responseEnd - n.requestStart, full: n.loadEventEnd - n.startTime});"
                        + "  else setTimeout(poll, 5); })();");
        return new double[] {((Number) t.get("server")).doubleValue(), ((Number) t.get("full")).doubleValue()};
    }

    private static String cpuModel() throws Exception {
        return Files.readAllLines(Path.of("/proc/cpuinfo")).stream().filter(l -> l.startsWith("model name"))
                .findFirst().map(l -> l.substring(l.indexOf(':') + 1).trim()).orElse("unknown CPU");
    }
}
