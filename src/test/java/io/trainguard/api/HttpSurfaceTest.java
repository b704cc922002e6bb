package io.trainguard.api;

import static io.restassured.RestAssured.given;
import static org.hamcrest.Matchers.containsString;
import static org.hamcrest.Matchers.equalTo;
import static org.hamcrest.Matchers.hasItem;
import static org.hamcrest.Matchers.greaterThanOrEqualTo;

import io.quarkus.test.junit.QuarkusTest;
import io.restassured.http.ContentType;
import org.junit.jupiter.api.Test;

@QuarkusTest
class HttpSurfaceTest extends SidecarTestSupport {

    /** Health and metrics live on the management interface, not the gRPC/REST port. */
    @io.quarkus.test.common.http.TestHTTPResource(value = "/", management = true)
    java.net.URL managementUrl;

    private io.restassured.specification.RequestSpecification management() {
        return given().baseUri("http://" + managementUrl.getHost()).port(managementUrl.getPort());
    }

    private String haltedRun() {
        String run = Sidecar.newRunId("halt");
        sidecar.open(run, 0, 1);
        for (int s = 0; s < 4; s++) {
            sidecar.report(run, 0, s, Double.NaN, 1);
        }
        return run;
    }

    @Test
    void trainingHealthGroup_haltedRun_isDownWithRunReasonAndStep() {
        String run = haltedRun();
        management().get("/q/health/group/training").then().statusCode(503)
                .body("status", equalTo("DOWN"))
                .body("checks[0].name", equalTo("training"))
                .body("checks[0].data.haltedRuns", containsString(run))
                .body("checks[0].data.halted", greaterThanOrEqualTo(1));
        management().get("/q/health/group/training").then().body("checks[0].data.reason", containsString("consecutive skipped steps"));
        // The sidecar itself stays live and ready: a halted run is the trainer's problem, not the sidecar's.
        management().get("/q/health/live").then().statusCode(200).body("checks.name", hasItem("engine"));
        management().get("/q/health/ready").then().statusCode(200).body("checks.name", hasItem("journal"));
    }

    @Test
    void rest_runListAndDetail_showStateAndIncidents() {
        String run = haltedRun();
        given().get("/api/runs").then().statusCode(200).body("runId", hasItem(run));
        given().get("/api/runs/" + run).then().statusCode(200)
                .body("run.state", equalTo("HALTED"))
                .body("run.lastStep", equalTo(3))
                .body("incidents[0].kind", equalTo("HALT"))
                .body("incidents.kind", hasItem("NON_FINITE_LOSS"));
        given().get("/api/runs/nope").then().statusCode(404).body("message", containsString("call OpenRun"));
    }

    @Test
    void rest_policyChange_appliesAndIsJournaled() {
        String run = Sidecar.newRunId("policy");
        sidecar.open(run, 0, 1);
        given().contentType(ContentType.JSON).body("{\"spikeZThreshold\": 4.5, \"clipMode\": \"ZSCORE\", \"reason\": \"on-call\"}")
                .put("/api/runs/" + run + "/policy").then().statusCode(200)
                .body("spikeZThreshold", equalTo(4.5f)).body("clipMode", equalTo("ZSCORE"));
        given().get("/api/runs/" + run).then().body("incidents[0].kind", equalTo("POLICY_CHANGED"))
                .body("incidents[0].message", containsString("spikeZThreshold=6.0 -> 4.5"));
        given().contentType(ContentType.JSON).body("{\"spikeEmaAlpha\": 2}").put("/api/runs/" + run + "/policy")
                .then().statusCode(400).body("message", containsString("spike_ema_alpha"));
        // every policy field is settable over REST too, not only the ones the first version listed
        given().contentType(ContentType.JSON)
                .body("{\"rollbackWindowSteps\": 2000, \"recoverySteps\": 7, \"hangMin\": \"PT45S\", \"zclipAlpha\": 0.9}")
                .put("/api/runs/" + run + "/policy").then().statusCode(200)
                .body("rollbackWindowSteps", equalTo(2000)).body("recoverySteps", equalTo(7))
                .body("zclipAlpha", equalTo(0.9f)).body("hangMin", org.hamcrest.Matchers.anyOf(equalTo("PT45S"), equalTo(45.0f)));
    }

    @Test
    void rest_forensicsOfUnknownCheckpoint_is404WithErrorBody() {
        // prevents: an unknown checkpoint answered as a 500 once the resource stopped mapping it itself
        String run = Sidecar.newRunId("forensics404");
        sidecar.open(run, 0, 1);
        given().contentType(ContentType.JSON).body("{}").post("/api/runs/" + run + "/checkpoints/ckpt-nope/forensics")
                .then().statusCode(404).contentType(ContentType.JSON)
                .body("error", equalTo("CheckpointNotFound"))
                .body("message", containsString("ckpt-nope"));
        given().contentType(ContentType.JSON).body("{}").post("/api/runs/nope-" + run + "/checkpoints/ckpt-nope/forensics")
                .then().statusCode(404).body("error", equalTo("RunNotFound"));
    }

    @Test
    void metrics_afterVerdicts_exposeCountersGaugesAndLatencyHistogram() {
        String run = Sidecar.newRunId("metrics");
        sidecar.open(run, 0, 1);
        sidecar.report(run, 0, 0, 2.0, 0.5);
        sidecar.report(run, 0, 1, Double.NaN, 0.5);
        sidecar.report(run, 0, 2, 2.0, 3.0);
        management().get("/q/metrics").then().statusCode(200)
                .body(containsString("trainguard_verdicts_total{action=\"SKIP\"}"))
                .body(containsString("trainguard_nonfinite_total{source=\"loss\"}"))
                .body(containsString("trainguard_run_clip_threshold{run=\"" + run + "\"} 1.0"))
                .body(containsString("trainguard_run_grad_norm{run=\"" + run + "\"} 3.0"))
                .body(containsString("trainguard_verdict_latency_seconds_bucket"))
                .body(containsString("trainguard_steps_total"));
    }
}
