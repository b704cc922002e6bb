package io.trainguard.report;

import java.util.List;

/**
 * What a person needs to act on one incident: what happened, where, the likely causes (most
 * likely first, each with the evidence it rests on and what to change), and what was looked at.
 *
 * @param dataPosition the sample index of the batch, when the trainer reported one (-1: unknown)
 */
public record RootCauseReport(
        long incidentId,
        String runId,
        String kind,
        String severity,
        String what,
        Where where,
        List<Cause> likelyCauses,
        List<String> evidenceChecked) {

    public record Where(int rank, long step, String firstBadModule, long dataPosition, String description) {
    }

    /**
     * @param code     stable identifier (e.g. FP16_WITHOUT_MASTER_WEIGHTS, VALIDATION_SIDE_EFFECT)
     * @param evidence what trainguard saw that points here
     * @param fix      what to change
     */
    public record Cause(String code, String title, String evidence, String fix) {
    }
}
