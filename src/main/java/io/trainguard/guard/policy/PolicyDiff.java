package io.trainguard.guard.policy;

import java.util.ArrayList;
import java.util.List;

/** "spikeZThreshold=6.0 -> 4.0": what a policy change journals. */
public final class PolicyDiff {
    private PolicyDiff() {
    }

    public static String describe(Policy before, Policy after) {
        // A record's toString lists every component as name=value; comparing those needs no
        // reflection, which keeps the native image free of reflection config for Policy.
        String[] a = components(before);
        String[] b = components(after);
        List<String> changes = new ArrayList<>();
        for (int i = 0; i < a.length; i++) {
            if (!a[i].equals(b[i])) {
                changes.add(a[i] + " -> " + b[i].substring(b[i].indexOf('=') + 1));
            }
        }
        return changes.isEmpty() ? "no change" : String.join(", ", changes);
    }

    private static String[] components(Policy p) {
        String s = p.toString();
        return s.substring(s.indexOf('[') + 1, s.length() - 1).split(", ");
    }
}
