package io.trainguard.api.grpc;

import io.trainguard.api.grpc.v1.ReportFaultRequest;
import io.trainguard.fault.FaultClass;
import io.trainguard.fault.FaultLedger;
import io.trainguard.guard.InvalidRequestException;

/** Fault replay messages <-> the fault package, and the incident texts they become. */
final class FaultMapper {
    private FaultMapper() {
    }

    static FaultClass faultClass(io.trainguard.api.grpc.v1.FaultClass c) {
        return switch (c) {
            case FAULT_CLASS_TRANSIENT -> FaultClass.TRANSIENT;
            case FAULT_CLASS_DETERMINISTIC -> FaultClass.DETERMINISTIC;
            case FAULT_CLASS_UNSTABLE -> FaultClass.UNSTABLE;
            default -> throw new InvalidRequestException("fault_class must be TRANSIENT, DETERMINISTIC or UNSTABLE");
        };
    }

    static String describe(ReportFaultRequest r, FaultClass fault, FaultLedger.Tally tally) {
        String what = switch (fault) {
            case TRANSIENT -> "the replay was clean: the replayed update was applied, no step lost ("
                    + tally.transients() + " transient fault(s) on " + tally.device() + ")";
            case DETERMINISTIC -> "the replay repeated the fault: the batch at data position " + r.getDataPosition()
                    + " is skipped, also after a rollback";
            case UNSTABLE -> "the replay showed a different fault: the step was skipped; the numerics are unstable "
                    + "(lower the learning rate, check precision settings)";
        };
        return fault + " fault at step " + r.getStep() + " on " + tally.device() + ": " + what
                + (r.getDetail().isEmpty() ? "" : ". " + r.getDetail());
    }

    static String suspect(FaultLedger.Tally t, int threshold) {
        return "device " + t.device() + " is suspect: " + t.transients() + " transient faults (threshold " + threshold
                + "); replays of its faulty steps came out clean, which points at silent data corruption or a failing "
                + "part. The trainer health group is DOWN; move the job to another device";
    }
}
