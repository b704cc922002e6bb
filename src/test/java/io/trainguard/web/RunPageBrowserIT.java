package io.trainguard.web;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.PackagedSidecar;
import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.openqa.selenium.By;
import org.openqa.selenium.OutputType;
import org.openqa.selenium.WebElement;
import org.openqa.selenium.chrome.ChromeDriver;
import org.openqa.selenium.chrome.ChromeDriverService;
import org.openqa.selenium.chrome.ChromeOptions;
import org.openqa.selenium.interactions.Actions;

/**
 * The run page in real headless Chromium, against the packaged sidecar fed by a real guarded
 * PyTorch run (clients/python/scripts/demo_run.py: a NaN burst that rejects a fresh checkpoint and
 * rolls back to the known-good one). Saves the screenshots shown in the README to docs/img/.
 */
class RunPageBrowserIT {
    static final String RUN = "demo-run";
    @org.junit.jupiter.api.io.TempDir
    static Path dir;
    static PackagedSidecar app;
    static ChromeDriver browser;

    @BeforeAll
    static void trainAndOpenBrowser() throws Exception {
        Path roots = Files.createDirectories(dir.resolve("checkpoints"));
        app = new PackagedSidecar(dir).with("trainguard.checkpoint.roots", roots.toString()).start();
        String python = System.getenv().getOrDefault("TRAINGUARD_PYTHON", "/opt/trainguard-venv/bin/python");
        Process p = new ProcessBuilder(python, "clients/python/scripts/demo_run.py", "--target", "127.0.0.1:" + app.port,
                "--root", roots.toString(), "--run", RUN).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertTrue(p.waitFor(5, TimeUnit.MINUTES), "demo run did not finish");
        assertEquals(0, p.exitValue(), "demo run failed:\n" + out);

        ChromeOptions options = new ChromeOptions();
        options.setBinary(System.getenv().getOrDefault("CHROMIUM", "/usr/bin/chromium"));
        options.addArguments("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400");
        ChromeDriverService service = new ChromeDriverService.Builder()
                .usingDriverExecutable(new File(System.getenv().getOrDefault("CHROMEDRIVER", "/usr/bin/chromedriver")))
                .usingAnyFreePort().build();
        browser = new ChromeDriver(service, options);
        browser.manage().timeouts().pageLoadTimeout(Duration.ofSeconds(60));
    }

    @AfterAll
    static void close() throws Exception {
        if (browser != null) {
            browser.quit();
        }
        if (app != null) {
            app.close();
        }
    }

    private String url(String path) {
        return "http://127.0.0.1:" + app.port + path;
    }

    private static void screenshot(String name) throws Exception {
        Path img = Path.of("docs", "img");
        Files.createDirectories(img);
        Files.copy(browser.getScreenshotAs(OutputType.FILE).toPath(), img.resolve(name), StandardCopyOption.REPLACE_EXISTING);
    }

    @Test
    void runList_afterGuardedRun_listsTheRunWithItsState() {
        // prevents: a run page nobody can find because / does not list the runs
        browser.get(url("/"));
        WebElement link = browser.findElement(By.linkText(RUN));
        assertEquals("/runs/" + RUN, link.getAttribute("pathname"));
        assertTrue(browser.findElement(By.id("runs")).getText().contains("HEALTHY"));
    }

    @Test
    void runPage_nanBurstRollbackRejectedCheckpoint_drawsCurvesAndMarkers() throws Exception {
        // prevents: a page that renders but shows no curve, or loses the events that explain the run
        browser.get(url("/runs/" + RUN));
        for (String chart : List.of("loss-chart", "grad-chart")) {
            WebElement svg = browser.findElement(By.id(chart));
            String d = svg.findElement(By.cssSelector("path.mean")).getAttribute("d");
            assertTrue(d != null && d.split("L").length > 20, chart + " has no curve: " + d);
            assertFalse(svg.findElements(By.cssSelector("polygon.band")).isEmpty(), chart + " has no min..max band");
        }
        WebElement loss = browser.findElement(By.id("loss-chart"));
        List<String> kinds = loss.findElements(By.cssSelector("circle.incident")).stream()
                .map(e -> e.getAttribute("data-kind")).toList();
        assertTrue(kinds.contains("NON_FINITE_LOSS") && kinds.contains("ROLLBACK"), "incident markers: " + kinds);
        assertFalse(loss.findElements(By.cssSelector(".ckpt.good")).isEmpty(), "no known-good checkpoint marker");
        assertFalse(loss.findElements(By.cssSelector(".ckpt.rejected")).isEmpty(), "no rejected checkpoint marker");
        assertFalse(loss.findElements(By.cssSelector("line.rollback")).isEmpty(), "no rollback line");
        assertFalse(loss.findElements(By.cssSelector("rect.nonfinite")).isEmpty(), "NaN steps not marked");
        assertFalse(browser.findElement(By.id("grad-chart")).findElements(By.cssSelector("path.threshold")).isEmpty(),
                "no clip threshold line");
        assertTrue(browser.findElement(By.id("checkpoints")).getText().contains("REJECTED"));
        assertTrue(browser.findElement(By.id("policy")).getText().contains("rollbackSkipBatches"));

        WebElement nan = loss.findElements(By.cssSelector("circle.incident")).stream()
                .filter(e -> "NON_FINITE_LOSS".equals(e.getAttribute("data-kind"))).findFirst().orElseThrow();
        new Actions(browser).moveToElement(nan).perform();
        WebElement tip = browser.findElement(By.id("tip"));
        assertTrue(tip.isDisplayed() && tip.getText().startsWith("NON_FINITE_LOSS at step 4"), "hover: " + tip.getText());
        screenshot("run-page.png");
        nan.click();
        WebElement report = browser.findElement(By.id("selected-link"));
        report.click();
        assertTrue(browser.findElement(By.id("what")).getText().toLowerCase().contains("loss"));
        assertFalse(browser.findElements(By.cssSelector("#causes li.cause")).isEmpty(), "report has no causes");
        screenshot("incident-report.png");
    }

    @Test
    void runPage_fullHistory_loadsFromTheSidecarAsOnePage() {
        // prevents: a page that needs follow-up requests (or a JS build) before it shows anything
        browser.get(url("/runs/" + RUN + "?points=2000"));
        Object resources = browser.executeScript("return performance.getEntriesByType('resource').length");
        assertEquals(0L, ((Number) resources).longValue(), "the page fetched extra resources");
        Object ms = browser.executeScript("var t=performance.getEntriesByType('navigation')[0]; return t.responseEnd - t.requestStart");
        System.out.println("run page served in " + ms + " ms");
    }
}
