package io.trainguard.api;

import static io.restassured.RestAssured.given;
import static org.hamcrest.Matchers.containsString;
import static org.hamcrest.Matchers.hasItem;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.quarkus.test.junit.QuarkusTest;
import io.trainguard.api.grpc.v1.FaultClass;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.IncidentKind;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.ReportFaultRequest;
import io.trainguard.api.grpc.v1.ReportFaultResponse;
import org.junit.jupiter.api.Test;

@QuarkusTest
class FaultReplayApiTest extends SidecarTestSupport {
    /** Health and metrics live on the management interface, not the gRPC/REST port. */
    @io.quarkus.test.common.http.TestHTTPResource(value = "/", management = true)
    java.net.URL managementUrl;

    private io.restassured.specification.RequestSpecification management() {
        return given().baseUri("http://" + managementUrl.getHost()).port(managementUrl.getPort());
    }


    private ReportFaultResponse fault(String run, long step, FaultClass c, String device) {
        return sidecar.withDeadline().reportFault(ReportFaultRequest.newBuilder().setRunId(run).setStep(step)
                .setFaultClass(c).setDevice(device).setDataPosition(step + 1).setDetail("replay detail").build());
    }

    @Test
    void reportFault_transientsPastThreshold_suspectIncidentMetricAndTrainerGroupDown() {
        // prevents: a device that keeps corrupting steps staying invisible to the scheduler
        String run = Sidecar.newRunId("suspect");
        sidecar.open(run, 0, 1);
        String device = "cuda:3@" + run;
        assertFalse(fault(run, 4, FaultClass.FAULT_CLASS_TRANSIENT, device).getDeviceSuspect());
        assertEquals(2, fault(run, 9, FaultClass.FAULT_CLASS_TRANSIENT, device).getDeviceTransients());
        var third = fault(run, 12, FaultClass.FAULT_CLASS_TRANSIENT, device);
        assertTrue(third.getDeviceSuspect());
        var incidents = sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getIncidentsList();
        assertTrue(incidents.stream().anyMatch(i -> i.getKind() == IncidentKind.INCIDENT_KIND_SUSPECT_DEVICE
                && i.getStep() == 12 && i.getMessage().contains(device)), incidents.toString());
        assertEquals(3, incidents.stream().filter(i -> i.getKind() == IncidentKind.INCIDENT_KIND_FAULT_REPLAYED
                && i.getMessage().startsWith("TRANSIENT")).count());
        management().get("/q/metrics").then().statusCode(200)
                .body(containsString("trainguard_suspect_device{device=\"" + device + "\",run=\"" + run + "\"} 1.0"));
        management().get("/q/health/group/trainer").then().statusCode(503)
                .body("checks.name", hasItem("suspect-device"))
                .body("checks.find { it.name == 'suspect-device' }.data.device", org.hamcrest.Matchers.equalTo(device));
        // A new trainer process clears it (and leaves the shared app's trainer group as it found it).
        sidecar.withDeadline().openRun(OpenRunRequest.newBuilder().setRunId(run).setWorldSize(1)
                .setTrainerInstance("restarted").build());
        management().get("/q/health/group/trainer").then().body(containsString("suspect-device"))
                .body("checks.find { it.name == 'suspect-device' }.status", org.hamcrest.Matchers.equalTo("UP"));
        management().get("/q/metrics").then()
                .body(containsString("trainguard_suspect_device{device=\"" + device + "\",run=\"" + run + "\"} 0.0"));
    }

    @Test
    void reportFault_deterministic_incidentNamesDataPositionAndDeviceNotSuspect() {
        // prevents: a bad batch's position being lost, or a bad batch blamed on the hardware
        String run = Sidecar.newRunId("determ");
        sidecar.open(run, 0, 1);
        for (int i = 0; i < 4; i++) {
            assertFalse(fault(run, 20 + i, FaultClass.FAULT_CLASS_DETERMINISTIC, "cpu@" + run).getDeviceSuspect());
        }
        var incidents = sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getIncidentsList();
        assertTrue(incidents.stream().anyMatch(i -> i.getMessage().contains("data position 21")), incidents.toString());
    }

    @Test
    void reportFault_unsetClassOrUnknownRun_refusedWithReason() {
        // prevents: a malformed report silently counted, or an unknown run answered as if it existed
        String run = Sidecar.newRunId("badfault");
        sidecar.open(run, 0, 1);
        var e = assertThrows(StatusRuntimeException.class, () -> fault(run, 1, FaultClass.FAULT_CLASS_UNSPECIFIED, "d"));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
        assertTrue(e.getStatus().getDescription().contains("fault_class"));
        var missing = assertThrows(StatusRuntimeException.class, () -> fault("no-such-run", 1, FaultClass.FAULT_CLASS_TRANSIENT, "d"));
        assertEquals(Status.Code.NOT_FOUND, missing.getStatus().getCode());
    }
}
