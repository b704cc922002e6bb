package io.trainguard.guard.run;

import io.trainguard.guard.model.RunState;
import io.trainguard.guard.policy.Policy;

/**
 * When a run may validate: HEALTHY, past the warm-up, at most once per interval. One rule behind both
 * the verdict's validation flag (decided on every step, so no text is built: {@code why} is null) and
 * the explicit request (which says why not), so the two cannot drift apart.
 *
 * <p>The interval is a spacing from the last validation begun, not {@code step % interval == 0}: loops
 * validate at their own offsets ({@code if it % N == 0} before the step, {@code (step + 1) % N == 0}
 * after it), and a multiple-of rule refused every pass of those for the whole run. The same step again
 * (the other ranks' requests) gets the answer its first request got; a step before the last one (the
 * timeline a rollback rewound) is allowed.
 */
final class ValidationGate {

    private long last = -1; // the step of the last validation begun; -1: none in this process
    // The last request's step and answer: every rank asking at that step is told the same, so ranks
    // agree without a collective of their own (which would hang a loop that validates on rank 0 only).
    private long askedStep = -1;
    private boolean askedAllowed;
    private String askedWhy = "";

    /** Whether a validation may begin at {@code step}; if so it begins there. */
    boolean begin(RunStateMachine state, Policy policy, long step, StringBuilder why) {
        if (step == askedStep) {
            why.append(askedWhy);
            return askedAllowed;
        }
        int from = why.length();
        boolean allowed = open(state, policy, step, why);
        last = allowed ? step : last;
        askedStep = step;
        askedAllowed = allowed;
        askedWhy = why.substring(from);
        return allowed;
    }

    /** {@code why}, when not null, receives the reason validation is refused. */
    boolean open(RunStateMachine state, Policy policy, long step, StringBuilder why) {
        if (state.state() != RunState.HEALTHY) {
            if (why != null) {
                why.append("run is ").append(state.state()).append(": ").append(state.reason());
            }
            return false;
        }
        if (step < policy.validationWarmupSteps()) {
            if (why != null) {
                why.append("validation is deferred until step ").append(policy.validationWarmupSteps());
            }
            return false;
        }
        long interval = policy.validationIntervalSteps();
        if (last >= 0 && step > last && step - last < interval) {
            if (why != null) {
                why.append("validation runs at most every ").append(interval).append(" steps (the last began at step ")
                        .append(last).append("): deferred until step ").append(last + interval);
            }
            return false;
        }
        return true;
    }
}
