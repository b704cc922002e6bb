package io.trainguard.service;

import io.trainguard.fault.FaultLedger;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.model.RunSetup;

/** OpenRun: the engine opens (or resumes) the run, then the fault ledger learns which trainer process it is. */
public final class RunOpening {
    private final GuardedRuns guard;
    private final FaultLedger faults;

    public RunOpening(GuardedRuns guard, FaultLedger faults) {
        this.guard = guard;
        this.faults = faults;
    }

    /** A new trainer process resets the run's device fault counts; only after the engine accepted the open. */
    public GuardedRuns.OpenResult open(RunSetup setup) {
        GuardedRuns.OpenResult result = guard.open(setup);
        faults.opened(setup.runId(), setup.rank(), setup.trainerInstance());
        return result;
    }
}
