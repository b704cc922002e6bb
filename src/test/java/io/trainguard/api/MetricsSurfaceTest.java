package io.trainguard.api;

import static io.restassured.RestAssured.given;
import static org.hamcrest.Matchers.containsString;
import static org.hamcrest.Matchers.not;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.quarkus.test.junit.QuarkusTest;
import io.trainguard.api.grpc.v1.CloseRunRequest;
import org.junit.jupiter.api.Test;

@QuarkusTest
class MetricsSurfaceTest extends SidecarTestSupport {
    /** Health and metrics live on the management interface, not the gRPC/REST port. */
    @io.quarkus.test.common.http.TestHTTPResource(value = "/", management = true)
    java.net.URL managementUrl;

    private io.restassured.specification.RequestSpecification management() {
        return given().baseUri("http://" + managementUrl.getHost()).port(managementUrl.getPort());
    }


    @Test
    void metrics_everyCounter_existsAtZeroWithoutAnyEvent() {
        // prevents: alerts on rate(trainguard_skips_total[5m]) seeing "no data" instead of 0
        String body = management().get("/q/metrics").then().statusCode(200).extract().asString();
        for (String series : new String[] {"trainguard_steps_total", "trainguard_skips_total", "trainguard_clips_total",
            "trainguard_rollbacks_total", "trainguard_halts_total", "trainguard_verdicts_total{action=\"HALT\"}",
            "trainguard_nonfinite_total{source=\"grad\"}",
            "trainguard_verdict_latency_seconds_count"}) {
            assertTrue(body.contains(series), series + " missing from /q/metrics");
        }
    }

    @Test
    void metrics_runStateAndClose_stateIsALabelAndClosedRunsDisappear() {
        // prevents: a state number alerts must decode, and dead runs' series living forever
        String run = Sidecar.newRunId("mstate");
        sidecar.open(run, 0, 1);
        sidecar.report(run, 0, 0, 2.0, 0.5);
        management().get("/q/metrics").then()
                .body(containsString("trainguard_run_state{run=\"" + run + "\",state=\"HEALTHY\"} 1.0"))
                .body(containsString("trainguard_run_state{run=\"" + run + "\",state=\"HALTED\"} 0.0"));
        sidecar.withDeadline().closeRun(CloseRunRequest.newBuilder().setRunId(run).build());
        management().get("/q/metrics").then().body(not(containsString("run=\"" + run + "\"")));
    }

    @Test
    void metrics_latencyHistogram_hasAboutADozenBuckets() {
        // prevents: a hundred-bucket histogram per sidecar that makes Prometheus storage and queries slow
        String run = Sidecar.newRunId("mlat");
        sidecar.open(run, 0, 1);
        sidecar.report(run, 0, 0, 2.0, 0.5);
        String body = management().get("/q/metrics").then().extract().asString();
        long buckets = body.lines().filter(l -> l.startsWith("trainguard_verdict_latency_seconds_bucket")).count();
        assertTrue(buckets >= 10 && buckets <= 14, "buckets: " + buckets);
    }
}
