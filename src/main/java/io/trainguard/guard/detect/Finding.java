package io.trainguard.guard.detect;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.Severity;
import java.util.Map;

/**
 * What one detector saw in one step: the action it proposes, the clip cap it proposes (+inf for
 * none), the line for the verdict's reasons and, when {@code kind} is set, an incident to journal.
 *
 * @param kind     the incident to journal, or null for a finding that only shapes the verdict
 * @param message  the incident's text
 * @param reason   the verdict's reason line (usually the message)
 * @param module   the module it points at ("" for none)
 * @param advisory a proposal that only matters when nothing earlier proposed a stronger action (a
 *                 clip threshold is moot once the step is skipped): its reason is then left out
 * @param evidence the numbers behind it (value, mean, z, threshold...), for people and tests
 */
public record Finding(IncidentKind kind, Severity severity, Action action, double clipCap, String message, String reason,
                      String module, boolean advisory, Map<String, Double> evidence) {

    /** A finding that is journaled as an incident. */
    public static Finding incident(IncidentKind kind, Severity severity, Action action, double clipCap, String message,
                                   Map<String, Double> evidence) {
        return new Finding(kind, severity, action, clipCap, message, message, "", false, evidence);
    }

    /** A line in the verdict that is no incident of its own. */
    public static Finding note(Action action, double clipCap, String reason) {
        return new Finding(null, Severity.INFO, action, clipCap, reason, reason, "", false, Map.of());
    }

    /** A proposal that counts only if no earlier finding proposed a stronger action. */
    public static Finding proposal(Action action, double clipCap, String reason, Map<String, Double> evidence) {
        return new Finding(null, Severity.INFO, action, clipCap, reason, reason, "", true, evidence);
    }
}
