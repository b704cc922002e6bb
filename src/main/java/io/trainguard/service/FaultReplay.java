package io.trainguard.service;

import io.trainguard.fault.FaultClass;
import io.trainguard.fault.FaultLedger;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.Severity;

/**
 * ReportFault: the trainer replayed a faulty step and classified the fault. The ledger counts it
 * against the device, the engine journals it as an incident, and a device that just crossed the
 * suspect threshold gets its own CRITICAL incident.
 */
public final class FaultReplay {
    private final GuardedRuns guard;
    private final FaultLedger faults;

    /** One classified fault as the trainer reported it. */
    public record Report(String runId, int rank, long step, FaultClass fault, String device, long dataPosition,
                         String detail) {
    }

    /** The fault's incident and the device's tally after it. */
    public record Result(long incidentId, int deviceTransients, boolean deviceSuspect) {
    }

    public FaultReplay(GuardedRuns guard, FaultLedger faults) {
        this.guard = guard;
        this.faults = faults;
    }

    public Result report(Report r) {
        guard.run(r.runId()); // NOT_FOUND for an unknown run, before the ledger counts anything
        var tally = faults.record(r.runId(), r.device(), r.fault());
        var incident = guard.recordIncident(r.runId(), r.rank(), r.step(), IncidentKind.FAULT_REPLAYED,
                r.fault() == FaultClass.TRANSIENT ? Severity.WARNING : Severity.ERROR, describe(r, tally));
        if (tally.becameSuspect()) {
            guard.recordIncident(r.runId(), r.rank(), r.step(), IncidentKind.SUSPECT_DEVICE, Severity.CRITICAL,
                    suspect(tally, faults.suspectThreshold()));
        }
        return new Result(incident.id(), tally.transients(), tally.suspect());
    }

    static String describe(Report r, FaultLedger.Tally tally) {
        String what = switch (r.fault()) {
            case TRANSIENT -> "the replay was clean: the replayed update was applied, no step lost ("
                    + tally.transients() + " transient fault(s) on " + tally.device() + ")";
            case DETERMINISTIC -> "the replay repeated the fault: the batch at data position " + r.dataPosition()
                    + " is skipped, also after a rollback";
            case UNSTABLE -> "the replay showed a different fault: the step was skipped; the numerics are unstable "
                    + "(lower the learning rate, check precision settings)";
        };
        return r.fault() + " fault at step " + r.step() + " on " + tally.device() + ": " + what
                + (r.detail().isEmpty() ? "" : ". " + r.detail());
    }

    static String suspect(FaultLedger.Tally t, int threshold) {
        return "device " + t.device() + " is suspect: " + t.transients() + " transient faults (threshold " + threshold
                + "); replays of its faulty steps came out clean, which points at silent data corruption or a failing "
                + "part. The trainer health group is DOWN; move the job to another device";
    }
}
