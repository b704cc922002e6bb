package io.trainguard.fault;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;

class FaultLedgerTest {
    private final List<String> told = new ArrayList<>();
    private final FaultLedger ledger = new FaultLedger(3, (run, device, suspect) -> told.add(run + " " + device + " " + suspect));

    @Test
    void record_transientsPastThreshold_deviceSuspectOnceAndOtherDevicesNot() {
        // prevents: a flaky device going unnoticed, or every fault re-announcing the same suspect
        ledger.record("r", "cuda:0@h", FaultClass.TRANSIENT);
        ledger.record("r", "cuda:1@h", FaultClass.TRANSIENT);
        assertFalse(ledger.record("r", "cuda:0@h", FaultClass.TRANSIENT).suspect());
        var third = ledger.record("r", "cuda:0@h", FaultClass.TRANSIENT);
        assertTrue(third.suspect() && third.becameSuspect());
        var fourth = ledger.record("r", "cuda:0@h", FaultClass.TRANSIENT);
        assertTrue(fourth.suspect() && !fourth.becameSuspect());
        assertEquals(List.of("r cuda:0@h true"), told);
        assertEquals(1, ledger.suspects().size());
        assertEquals("cuda:0@h", ledger.suspects().get(0).device());
    }

    @Test
    void record_deterministicAndUnstable_doNotCountAgainstDevice() {
        // prevents: blaming the hardware for a bad batch or unstable numerics
        for (int i = 0; i < 5; i++) {
            ledger.record("r", "cuda:0@h", FaultClass.DETERMINISTIC);
            ledger.record("r", "cuda:0@h", FaultClass.UNSTABLE);
        }
        assertTrue(ledger.suspects().isEmpty());
    }

    @Test
    void opened_byNewTrainerProcess_clearsSuspectButSameProcessDoesNot() {
        // prevents: the health group holding a restarted trainer down for its predecessor's device,
        // or a re-open after a sidecar outage hiding a suspect device
        ledger.opened("r", 0, "proc-a");
        for (int i = 0; i < 3; i++) {
            ledger.record("r", "cuda:0@h", FaultClass.TRANSIENT);
        }
        ledger.opened("r", 0, "proc-a");
        assertEquals(1, ledger.suspects().size());
        ledger.opened("r", 1, "proc-b");  // another rank's process: not a restart
        assertEquals(1, ledger.suspects().size());
        ledger.opened("r", 0, "proc-c");
        assertTrue(ledger.suspects().isEmpty());
        assertEquals("r cuda:0@h false", told.get(told.size() - 1));
    }

    @Test
    void threshold_zero_neverSuspect() {
        // prevents: a sidecar configured not to judge devices marking one suspect anyway
        FaultLedger off = new FaultLedger(0, (r, d, s) -> told.add("x"));
        for (int i = 0; i < 10; i++) {
            off.record("r", "d", FaultClass.TRANSIENT);
        }
        assertTrue(off.suspects().isEmpty() && told.isEmpty());
    }
}
