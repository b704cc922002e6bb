package io.trainguard.guard.model;

import java.util.Collections;
import java.util.EnumSet;
import java.util.Set;

/**
 * What an incident is about. Only kinds the sidecar produces are listed; the proto keeps
 * CHECKPOINT_REJECTED (12) and SIDECAR_UNREACHABLE (13) numbered for wire compatibility only.
 */
public enum IncidentKind {
    NON_FINITE_LOSS,
    NON_FINITE_GRAD,
    NON_FINITE_MODULE,
    LOSS_SPIKE,
    GRAD_SPIKE,
    ROLLBACK,
    HALT,
    VALIDATION_MUTATION,
    PREFLIGHT,
    HANG,
    CROSS_RANK_MISMATCH,
    POLICY_CHANGED,
    RESUMED,
    TENSOR_FORENSICS,
    FAULT_REPLAYED,
    SUSPECT_DEVICE,
    CLOSED_BY_OPERATOR;

    /**
     * What the step detectors journal with the steps they skip (a scaler's own overflow, and a skip
     * taken together on another rank's account, have none): a restart counts a skipped step into its
     * rank's skip streak only with one of these. Kept by hand; SkipStreakAcrossRestartTest tries
     * every fault the detectors skip against it.
     */
    public static final Set<IncidentKind> STEP_FAULTS =
            Collections.unmodifiableSet(EnumSet.of(NON_FINITE_LOSS, NON_FINITE_GRAD, NON_FINITE_MODULE, LOSS_SPIKE, GRAD_SPIKE));
}
