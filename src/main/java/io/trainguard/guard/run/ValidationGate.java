package io.trainguard.guard.run;

import io.trainguard.guard.model.RunState;
import io.trainguard.guard.policy.Policy;

/**
 * When a run may validate: HEALTHY, past the warm-up, on the interval. One rule behind both the
 * verdict's validation flag (decided on every step, so no text is built: {@code why} is null) and
 * the explicit request (which says why not), so the two cannot drift apart.
 */
final class ValidationGate {

    private ValidationGate() {
    }

    /** {@code why}, when not null, receives the reason validation is refused. */
    static boolean open(RunStateMachine state, Policy policy, long step, StringBuilder why) {
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
        if (step % policy.validationIntervalSteps() != 0) {
            if (why != null) {
                why.append("validation runs every ").append(policy.validationIntervalSteps()).append(" steps");
            }
            return false;
        }
        return true;
    }
}
