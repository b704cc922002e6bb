package io.trainguard.guard.run;

import io.trainguard.guard.model.RunState;
import java.util.EnumMap;
import java.util.EnumSet;
import java.util.Map;
import java.util.Set;

/**
 * The only way a run changes state. Every legal transition is in {@link #LEGAL}; anything else is
 * a bug in the engine and throws rather than silently leaving a run in a state nobody planned.
 */
public final class RunStateMachine {

    private static final Map<RunState, Set<RunState>> LEGAL = new EnumMap<>(RunState.class);

    static {
        LEGAL.put(RunState.HEALTHY, EnumSet.of(RunState.DEGRADED, RunState.ROLLING_BACK, RunState.HALTED, RunState.CLOSED));
        LEGAL.put(RunState.DEGRADED, EnumSet.of(RunState.HEALTHY, RunState.ROLLING_BACK, RunState.HALTED, RunState.CLOSED));
        LEGAL.put(RunState.ROLLING_BACK, EnumSet.of(RunState.DEGRADED, RunState.HALTED, RunState.CLOSED));
        // An operator may resume a halted run once the cause is fixed; it restarts as DEGRADED so
        // that validation and checkpoint promotion wait for healthy steps again.
        LEGAL.put(RunState.HALTED, EnumSet.of(RunState.DEGRADED, RunState.CLOSED));
        LEGAL.put(RunState.CLOSED, EnumSet.noneOf(RunState.class));
    }

    private RunState state;
    private String reason;
    private long haltStep = -1;  // the step at which the run last halted

    public RunStateMachine(RunState initial, String reason) {
        this.state = initial;
        this.reason = reason;
    }

    public RunState state() {
        return state;
    }

    public String reason() {
        return reason;
    }

    public long haltStep() {
        return haltStep;
    }

    /** Halts at {@code step}. */
    void halt(String why, long step) {
        moveTo(RunState.HALTED, why);
        haltStep = step;
    }

    /** A run rebuilt from its journal: the state it was in, and where it last halted. */
    void restore(RunState to, String why, long step) {
        moveTo(to, why);
        haltStep = step;
    }

    /** The first unhealthy sign of a healthy run degrades it; any other state stays. */
    void degrade(String why) {
        if (state == RunState.HEALTHY) {
            moveTo(RunState.DEGRADED, why);
        }
    }

    /** What a step of a halted run is told: why it halted, and the two ways to train on. */
    String haltedReason(String runId) {
        return "run is halted since step " + haltStep + ": " + reason + ". To train on, fix the cause, then resume "
                + "this run (trainguard resume " + runId + " --reason \"...\", or POST /api/runs/" + runId
                + "/resume) or start the trainer under a new run id";
    }

    /** Moves to {@code next}; staying in the same state only updates the reason. */
    public void moveTo(RunState next, String why) {
        if (next != state && !LEGAL.get(state).contains(next)) {
            throw new IllegalStateException("illegal run state transition " + state + " -> " + next + " (" + why + ")");
        }
        state = next;
        reason = why;
    }
}
