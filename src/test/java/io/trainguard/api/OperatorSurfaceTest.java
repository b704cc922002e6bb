package io.trainguard.api;

import static io.restassured.RestAssured.given;
import static org.hamcrest.Matchers.containsString;
import static org.hamcrest.Matchers.equalTo;
import static org.hamcrest.Matchers.hasItem;
import static org.hamcrest.Matchers.not;

import io.quarkus.test.junit.QuarkusTest;
import io.restassured.path.json.JsonPath;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/** The run page, the root-cause report API and the OpenAPI document of the @QuarkusTest app. */
@QuarkusTest
class OperatorSurfaceTest extends SidecarTestSupport {

    private String nanRun() {
        String run = Sidecar.newRunId("page");
        sidecar.open(run, 0, 1);
        for (int s = 0; s < 25; s++) {
            sidecar.report(run, 0, s, s == 18 ? Double.NaN : 2.0 - s * 0.01, 0.5);
        }
        return run;
    }

    @Test
    void runPage_runWithNanStep_rendersChartsMarkersAndEscapesText() {
        // prevents: a page that breaks on a NaN or lets a message inject markup
        String run = nanRun();
        given().get("/").then().statusCode(200).contentType(containsString("text/html"))
                .body(containsString("href=\"/runs/" + run + "\""));
        given().get("/runs/" + run).then().statusCode(200)
                .body(containsString("id=\"loss-chart\""))
                .body(containsString("id=\"grad-chart\""))
                .body(containsString("data-kind=\"NON_FINITE_LOSS\" data-step=\"18\""))
                .body(containsString("class=\"nonfinite\""))
                .body(not(containsString("NaN,")));
        given().get("/runs/nope-" + run).then().statusCode(404);
    }

    @Test
    void report_nanIncident_saysWhatWhereAndAtLeastOneCause() {
        // prevents: a report endpoint that 500s or answers without the where/why a person needs
        String run = nanRun();
        List<Map<String, Object>> incidents = given().get("/api/runs/" + run + "/incidents").then().statusCode(200)
                .extract().jsonPath().getList("$");
        Map<String, Object> nan = incidents.stream().filter(i -> "NON_FINITE_LOSS".equals(i.get("kind"))).findFirst().orElseThrow();
        JsonPath r = given().get("/api/runs/" + run + "/incidents/" + nan.get("id") + "/report").then().statusCode(200)
                .body("kind", equalTo("NON_FINITE_LOSS"))
                .body("where.step", equalTo(18))
                .body("where.rank", equalTo(0))
                .extract().jsonPath();
        org.junit.jupiter.api.Assertions.assertFalse(r.getList("likelyCauses").isEmpty());
        given().get("/runs/" + run + "/incidents/" + nan.get("id")).then().statusCode(200)
                .body(containsString("id=\"causes\""));
        given().get("/api/runs/" + run + "/incidents/999999/report").then().statusCode(404)
                .body("message", containsString("has no incident 999999"));
    }

    @Test
    void openapi_restApi_isDescribedAtQOpenapi() {
        // prevents: REST endpoints shipped without a machine-readable contract
        given().accept("application/json").get("/q/openapi").then().statusCode(200)
                .body("paths.keySet()", hasItem("/api/runs/{runId}/steps"))
                .body("paths.keySet()", hasItem("/api/runs/{runId}/incidents/{incidentId}/report"))
                .body("info.title", equalTo("trainguard REST API"));
    }
}
