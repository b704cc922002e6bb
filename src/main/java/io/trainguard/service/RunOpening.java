package io.trainguard.service;

import io.trainguard.fault.FaultLedger;
import io.trainguard.guard.GuardService;
import io.trainguard.guard.model.RunSetup;

/** OpenRun: the engine opens (or resumes) the run, then the fault ledger learns which trainer process it is. */
public final class RunOpening {
    private final GuardService guard;
    private final FaultLedger faults;

    public RunOpening(GuardService guard, FaultLedger faults) {
        this.guard = guard;
        this.faults = faults;
    }

    /** A new trainer process resets the run's device fault counts; only after the engine accepted the open. */
    public GuardService.OpenResult open(RunSetup setup) {
        GuardService.OpenResult result = guard.open(setup);
        faults.opened(setup.runId(), setup.rank(), setup.trainerInstance());
        return result;
    }
}
