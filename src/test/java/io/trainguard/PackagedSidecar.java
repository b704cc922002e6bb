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
    /** Health and metrics: Quarkus' management interface (9000 in production). */
    public final int managementPort;
    private final List<String> jvmArgs = new ArrayList<>();
    private Process process;
    /** Extra -D system properties (e.g. trainguard.checkpoint.roots) for tests that need them. */
    private final java.util.Map<String, String> properties = new java.util.LinkedHashMap<>();

    public PackagedSidecar(Path dataDir) throws IOException {
        this.dataDir = dataDir;
        try (ServerSocket s = new ServerSocket(0); ServerSocket m = new ServerSocket(0)) {
            this.port = s.getLocalPort();
            this.managementPort = m.getLocalPort();
        }
    }

    /** Extra JVM options (-Xmx..., -Dkey=value; later ones win over the defaults). */
    public PackagedSidecar withJvmArgs(String... args) {
        jvmArgs.addAll(List.of(args));
        return this;
    }

    /** One extra -D system property (e.g. trainguard.checkpoint.roots). */
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
                "-Dtrainguard.journal.path=" + dataDir.resolve("journal.db"),
                "-Dquarkus.management.port=" + managementPort));
        cmd.addAll(jvmArgs);
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

    /** HTTP status of a GET; /q/... paths go to the management port, others to the main port. */
    public int status(String path) {
        int p = path.startsWith("/q/") ? managementPort : port;
        try {
            HttpURLConnection c = (HttpURLConnection) URI.create("http://127.0.0.1:" + p + path).toURL().openConnection();
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

    public boolean alive() {
        return process != null && process.isAlive();
    }

    public String log() throws IOException {
        return Files.readString(dataDir.resolve("sidecar.log"));
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
