package io.trainguard.api.rest;

import com.fasterxml.jackson.annotation.JsonAnySetter;
import com.fasterxml.jackson.databind.JsonNode;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.policy.Policy;
import io.trainguard.guard.policy.PolicyField;
import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A partial policy in JSON: absent (or null) fields keep their current value. Any
 * {@link PolicyField} can be set, by its Java name ("spikeZThreshold") or its proto name
 * ("spike_z_threshold"); durations as "30s", "5m" or ISO-8601 ("PT30S"). An unknown name is
 * refused with 400 rather than ignored, so a typo cannot silently leave the policy unchanged.
 */
public final class PolicyPatch {
    private final Map<String, JsonNode> fields = new LinkedHashMap<>();
    private String reason;

    public String getReason() {
        return reason;
    }

    public void setReason(String reason) {
        this.reason = reason;
    }

    String reason() {
        return reason;
    }

    @JsonAnySetter
    public void set(String name, JsonNode value) {
        fields.put(name, value);
    }

    Policy.Builder applyTo(Policy.Builder b) {
        for (var e : fields.entrySet()) {
            PolicyField f = PolicyField.named(e.getKey());
            if (f == null) {
                // snake_case, as every other policy message and the Python client's policy={...} name them
                throw new InvalidRequestException("unknown policy field '" + e.getKey() + "': use one of "
                        + Arrays.stream(PolicyField.values()).map(PolicyField::key).toList()
                        + " (their camelCase forms, as GET returns them, are accepted too)");
            }
            JsonNode v = e.getValue();
            if (v == null || v.isNull()) {
                continue;
            }
            if (!v.isValueNode()) {
                throw new InvalidRequestException("policy: " + f.key() + " must be a number or a string, got " + v);
            }
            f.set(b, f.parse(v.asText()));
        }
        return b;
    }
}
