package io.trainguard.api;

import static io.restassured.RestAssured.given;
import static org.hamcrest.Matchers.containsString;
import static org.hamcrest.Matchers.equalTo;
import static org.hamcrest.Matchers.hasItem;
import static org.hamcrest.Matchers.lessThanOrEqualTo;
import static org.hamcrest.Matchers.nullValue;

import io.quarkus.test.junit.QuarkusTest;
import org.junit.jupiter.api.Test;

@QuarkusTest
class HistoryApiTest extends SidecarTestSupport {

    @Test
    void steps_runWithNanStep_servesBucketsVerdictsAndIncidentsOnOneAxis() {
        // prevents: the journal's history being unreachable, or NaN breaking the JSON
        String run = Sidecar.newRunId("hist");
        sidecar.open(run, 0, 1);
        for (int s = 0; s < 30; s++) {
            sidecar.report(run, 0, s, s == 20 ? Double.NaN : 2.0 - s * 0.01, 0.5);
        }
        given().get("/api/runs/" + run + "/steps").then().statusCode(200)
                .body("runId", equalTo(run))
                .body("steps.reports", equalTo(30))
                .body("steps.bucketWidth", equalTo(1))
                .body("steps.buckets.size()", equalTo(30))
                .body("steps.buckets[20].lossMax", nullValue())
                .body("steps.buckets[20].nonFiniteLoss", equalTo(1))
                .body("steps.buckets[20].skips", equalTo(1))
                .body("steps.buckets[0].lossMax", equalTo(2.0f))
                .body("incidents.kind", hasItem("NON_FINITE_LOSS"))
                .body("incidents.find { it.kind == 'NON_FINITE_LOSS' }.step", equalTo(20));
        given().get("/api/runs/" + run + "/steps?points=7&from=5&to=25").then().statusCode(200)
                .body("steps.buckets.size()", lessThanOrEqualTo(7))
                .body("steps.buckets[0].firstStep", equalTo(5))
                .body("steps.fromStep", equalTo(5)).body("steps.toStep", equalTo(25));
    }

    @Test
    void steps_badArguments_answer4xxSayingWhatToFix() {
        // prevents: a 500 or an empty chart for a typo in the query
        String run = Sidecar.newRunId("hist-bad");
        sidecar.open(run, 0, 1);
        given().get("/api/runs/" + run + "/steps?points=0").then().statusCode(400).body("message", containsString("points must be"));
        given().get("/api/runs/" + run + "/steps?rank=3").then().statusCode(400).body("message", containsString("outside world size"));
        given().get("/api/runs/" + run + "/steps?from=9&to=3").then().statusCode(400).body("message", containsString("swap"));
        given().get("/api/runs/nope-" + run + "/steps").then().statusCode(404);
    }
}
