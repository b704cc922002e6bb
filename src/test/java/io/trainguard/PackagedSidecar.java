package io.trainguard;

import java.io.IOException;
import java.net.HttpURLConnection;
import java.net.ServerSocket;
import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/** The packaged jar (target/quarkus-app) as a real child process, for tests that must kill it. */
public final class PackagedSidecar implements AutoCloseable {
    public final Path dataDir;
    public final int port;
    private Process process;
    /** Extra -D system properties (e.g. trainguard.checkpoint.roots) for tests that need them. */
    private final java.util.Map<String, String> properties = new java.util.LinkedHashMap<>();

    public PackagedSidecar(Path dataDir) throws IOException {
        this.dataDir = dataDir;
        try (ServerSocket s = new ServerSocket(0)) {
            this.port = s.getLocalPort();
        }
    }

    public PackagedSidecar with(String key, String value) {
        properties.put(key, value);
        return this;
    }

    public PackagedSidecar start() throws Exception {
        Path jar = Path.of("target/quarkus-app/quarkus-run.jar").toAbsolutePath();
        if (!Files.exists(jar)) {
            throw new IllegalStateException("package the app first (./mvnw package): " + jar + " is missing");
        }
        List<String> cmd = new ArrayList<>(List.of(Path.of(System.getProperty("java.home"), "bin", "java").toString(),
                "--add-modules", "jdk.incubator.vector",
                "-Dtrainguard.listen.port=" + port,
                "-Dtrainguard.listen.socket=" + dataDir.resolve("tg.sock"),
                "-Dtrainguard.journal.path=" + dataDir.resolve("journal.db")));
        properties.forEach((k, v) -> cmd.add("-D" + k + "=" + v));
        cmd.addAll(List.of("-jar", jar.toString()));
        process = new ProcessBuilder(cmd).redirectErrorStream(true)
                .redirectOutput(ProcessBuilder.Redirect.appendTo(dataDir.resolve("sidecar.log").toFile())).start();
        long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
        while (System.nanoTime() < deadline) {
            if (!process.isAlive()) {
                throw new IllegalStateException("sidecar exited: " + Files.readString(dataDir.resolve("sidecar.log")));
            }
            if (status("/q/health/ready") == 200) {
                return this;
            }
            Thread.sleep(200);
        }
        throw new IllegalStateException("sidecar not ready after 60 s: " + Files.readString(dataDir.resolve("sidecar.log")));
    }

    public int status(String path) {
        try {
            HttpURLConnection c = (HttpURLConnection) URI.create("http://127.0.0.1:" + port + path).toURL().openConnection();
            c.setConnectTimeout(500);
            c.setReadTimeout(2000);
            return c.getResponseCode();
        } catch (IOException e) {
            return -1;
        }
    }

    /** SIGKILL: no shutdown hook, no flush, exactly what an OOM kill or node failure does. */
    public void killHard() throws InterruptedException {
        process.destroyForcibly();
        process.waitFor();
    }

    public long pid() {
        return process.pid();
    }

    @Override
    public void close() throws InterruptedException {
        if (process != null && process.isAlive()) {
            process.destroy();
            process.waitFor();
        }
    }
}
