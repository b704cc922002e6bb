package io.trainguard.api.grpc;

import io.trainguard.fault.FaultClass;
import io.trainguard.guard.InvalidRequestException;

/** Fault replay messages <-> the fault package. */
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
}
