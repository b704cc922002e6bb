package io.trainguard.guard.run;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import io.trainguard.guard.model.RunState;
import org.junit.jupiter.api.Test;

class RunStateMachineTest {
    @Test
    void moveTo_illegalTransition_throws() {
        // A closed run must never come back to life through a stray report.
        var m = new RunStateMachine(RunState.CLOSED, "closed");
        assertThrows(IllegalStateException.class, () -> m.moveTo(RunState.HEALTHY, "x"));
        var h = new RunStateMachine(RunState.HALTED, "halt");
        assertThrows(IllegalStateException.class, () -> h.moveTo(RunState.HEALTHY, "x"));
    }

    @Test
    void moveTo_legalPath_updatesStateAndReason() {
        var m = new RunStateMachine(RunState.HEALTHY, "opened");
        m.moveTo(RunState.DEGRADED, "skip");
        m.moveTo(RunState.ROLLING_BACK, "rollback");
        m.moveTo(RunState.DEGRADED, "restored");
        m.moveTo(RunState.HEALTHY, "recovered");
        assertEquals(RunState.HEALTHY, m.state());
        assertEquals("recovered", m.reason());
    }
}
