package io.trainguard.api;

import static io.restassured.RestAssured.given;
import static org.hamcrest.Matchers.containsString;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.quarkus.test.junit.QuarkusTest;
import io.quarkus.test.junit.QuarkusTestProfile;
import io.quarkus.test.junit.TestProfile;
import io.restassured.http.ContentType;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.UpdatePolicyRequest;
import io.trainguard.guard.policy.PolicyField;
import java.time.Duration;
import java.util.HashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * Every policy field is set and read back over each surface: config (this profile configures every
 * trainguard.policy key to a non-default value), gRPC (UpdatePolicy, GetRun) and REST (PUT policy).
 */
@QuarkusTest
@TestProfile(PolicyRoundTripTest.EveryPolicyKeyConfigured.class)
class PolicyRoundTripTest extends SidecarTestSupport {

    public static class EveryPolicyKeyConfigured implements QuarkusTestProfile {
        @Override
        public Map<String, String> getConfigOverrides() {
            Map<String, String> config = new HashMap<>();
            PolicySamples.samples(0).forEach((f, v) -> config.put(f.configKey(), PolicySamples.configText(v)));
            return config;
        }
    }

    private Map<PolicyField, Object> policyOverGrpc(String run) {
        return PolicySamples.fromProto(sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build())
                .getRun().getPolicy());
    }

    private static void assertAll(Map<PolicyField, Object> expected, Map<PolicyField, Object> actual, String surface) {
        for (PolicyField f : PolicyField.values()) {
            assertEquals(expected.get(f), actual.get(f), surface + ": " + f.key());
        }
    }

    // Prevents: a policy field that one surface cannot set or read (zclip_alpha was unreachable over gRPC).
    @Test
    void everyPolicyField_setOverConfigGrpcAndRest_readsBackOverGrpc() {
        String run = Sidecar.newRunId("policy");
        sidecar.open(run, 0, 1);
        assertAll(PolicySamples.samples(0), policyOverGrpc(run), "config");

        var updated = sidecar.withDeadline().updatePolicy(UpdatePolicyRequest.newBuilder().setRunId(run)
                .setPolicy(PolicySamples.toProto(PolicySamples.samples(1))).setReason("round trip").build());
        assertAll(PolicySamples.samples(1), PolicySamples.fromProto(updated.getPolicy()), "gRPC UpdatePolicy response");
        assertAll(PolicySamples.samples(1), policyOverGrpc(run), "gRPC");

        Map<String, Object> json = new HashMap<>();
        PolicySamples.samples(2).forEach((f, v) -> json.put(f.javaName(),
                v instanceof Duration || v instanceof Enum<?> ? PolicySamples.configText(v) : v));
        json.put("reason", "round trip");
        given().contentType(ContentType.JSON).body(json).put("/api/runs/" + run + "/policy").then().statusCode(200);
        assertAll(PolicySamples.samples(2), policyOverGrpc(run), "REST");
    }

    // Prevents: an infinite or absurd threshold silently turning a check off instead of being refused.
    @Test
    void updatePolicy_nonFiniteOrUnknownField_isRefusedNamingItAndChangesNothing() {
        String run = Sidecar.newRunId("policy-bad");
        sidecar.open(run, 0, 1);
        var grpc = assertThrows(StatusRuntimeException.class, () -> sidecar.withDeadline().updatePolicy(UpdatePolicyRequest
                .newBuilder().setRunId(run).setPolicy(io.trainguard.api.grpc.v1.Policy.newBuilder().setSpikeZThreshold(1e308)).build()));
        assertEquals(Status.Code.INVALID_ARGUMENT, grpc.getStatus().getCode());
        assertTrue(grpc.getStatus().getDescription().contains("spike_z_threshold"), grpc.getStatus().getDescription());

        given().contentType(ContentType.JSON).body(Map.of("hangFactor", "Infinity")).put("/api/runs/" + run + "/policy")
                .then().statusCode(400).body(containsString("hang_factor"));
        given().contentType(ContentType.JSON).body(Map.of("spikeZTreshold", 4.0)).put("/api/runs/" + run + "/policy")
                .then().statusCode(400).body(containsString("spikeZTreshold"), containsString("spike_z_threshold,"),
                        containsString("camelCase forms"));
        assertAll(PolicySamples.samples(0), policyOverGrpc(run), "after refused changes");
    }
}
