package io.trainguard.deploy;

import static io.restassured.RestAssured.given;
import static org.hamcrest.Matchers.anyOf;
import static org.hamcrest.Matchers.containsString;
import static org.hamcrest.Matchers.everyItem;
import static org.hamcrest.Matchers.hasItem;
import static org.hamcrest.Matchers.is;
import static org.hamcrest.Matchers.emptyOrNullString;
import static org.hamcrest.Matchers.not;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashSet;
import java.util.List;

import org.junit.jupiter.api.Test;

import io.quarkus.test.junit.QuarkusIntegrationTest;
import io.restassured.response.Response;

/**
 * The endpoints the Kubernetes probes call, against the packaged application (fast-jar, or the
 * native executable with -Dnative): what the kubelet sees, not what the dev-mode app sees.
 * Paths and meanings must stay in step with k8s/base/job.yaml (ManifestConsistencyTest).
 */
@QuarkusIntegrationTest
class PackagedAppHealthIT {

    /**
     * Health and metrics live on the management interface, not the gRPC/REST port. The packaged
     * app is launched with -Dquarkus.management.port=0 (quarkus.test.arg-line): its log says where.
     */
    private io.restassured.specification.RequestSpecification management() {
        try {
            var m = java.util.regex.Pattern.compile("Management interface listening on http://[^:]+:(\\d+)")
                    .matcher(Files.readString(Path.of("target/quarkus.log")));
            int port = -1;
            while (m.find()) {
                port = Integer.parseInt(m.group(1));
            }
            return given().baseUri("http://127.0.0.1").port(port);
        } catch (java.io.IOException e) {
            throw new IllegalStateException(e);
        }
    }

    // Prevents: a startupProbe that never passes, so the trainer never starts.
    @Test
    void started_freshSidecar_isUpWithNamedChecks() {
        assertUpWithNamedChecks("/q/health/started");
    }

    // Prevents: a liveness probe that restarts a healthy sidecar in a loop.
    @Test
    void live_freshSidecar_isUpWithNamedChecks() {
        assertUpWithNamedChecks("/q/health/live");
    }

    // Prevents: a readiness probe that checks nothing (or not the gRPC server the trainer needs).
    @Test
    void ready_freshSidecar_isUpAndChecksTheGrpcServer() {
        Response r = assertUpWithNamedChecks("/q/health/ready");
        r.then().body("checks.name", hasItem("gRPC Server"));
    }

    // Prevents: the trainer's livenessProbe killing a trainer that has not reported a step yet.
    @Test
    void trainerGroup_noRunYet_isUp() {
        assertUpWithNamedChecks("/q/health/group/trainer");
    }

    // Prevents: the training group DOWN (HALTED) on a sidecar that has no run.
    @Test
    void trainingGroup_noRunYet_isUp() {
        assertUpWithNamedChecks("/q/health/group/training");
    }

    // Prevents: the PodMonitor scraping a path that serves no Prometheus text.
    @Test
    void metrics_packagedApp_servesPrometheusText() {
        management().when().get("/q/metrics")
                .then().statusCode(200)
                // Prometheus asks for OpenMetrics first; either exposition format is fine.
                .contentType(anyOf(containsString("text/plain"), containsString("application/openmetrics-text")))
                .body(containsString("# TYPE "));
    }

    // Prevents: the packaged app silently verifying checkpoints with the 2x slower scalar kernels
    // because the launch line lost --add-modules jdk.incubator.vector, or copying checkpoints
    // through a buffer because it could not unmap (jdk.unsupported missing from the runtime).
    @Test
    void scanKernels_packagedAppLaunchedAsDocumented_useTheVectorApiOnMappedUnits() throws Exception {
        String log = Files.readString(Path.of("target/quarkus.log"));
        int at = log.lastIndexOf("checkpoint scan kernels: ");
        assertTrue(at >= 0, "no scan-kernel line in target/quarkus.log");
        String line = log.substring(at, log.indexOf('\n', at));
        assertTrue(line.startsWith("checkpoint scan kernels: vector"), line);
        assertTrue(line.endsWith("; reads: map"), line);
    }

    private Response assertUpWithNamedChecks(String path) {
        Response r = management().when().get(path);
        r.then().statusCode(200)
                .body("status", is("UP"))
                .body("checks.name", everyItem(not(emptyOrNullString())))
                .body("checks.status", everyItem(is("UP")));
        List<String> names = r.jsonPath().getList("checks.name", String.class);
        assertEquals(names.size(), new HashSet<>(names).size(), path + ": duplicate check names " + names);
        return r;
    }
}
