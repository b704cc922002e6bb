package io.trainguard.guard.policy;

import java.util.ArrayList;
import java.util.List;

/** "spikeZThreshold=6.0 -> 4.0": what a policy change journals. */
public final class PolicyDiff {
    private PolicyDiff() {
    }

    public static String describe(Policy before, Policy after) {
        List<String> changes = new ArrayList<>();
        for (PolicyField f : PolicyField.values()) {
            Object a = f.get(before);
            Object b = f.get(after);
            if (!a.equals(b)) {
                changes.add(f.javaName() + "=" + a + " -> " + b);
            }
        }
        return changes.isEmpty() ? "no change" : String.join(", ", changes);
    }
}
