package io.trainguard.guard.model;

import java.time.Duration;
import java.util.List;

/**
 * What one rank measured for one step. Values may be NaN or infinite: that is data, not bad input.
 *
 * @param moduleNames    empty when the modules were declared at OpenRun (then moduleFinite and
 *                       moduleMaxAbs follow that order)
 * @param decidedLocally the client already acted within the bounds of the previous verdict
 * @param skippedByAgreement several ranks on the device gate skipped this update together although
 *                       this rank's own values were finite (another rank's fault, or their grad
 *                       norms disagreed)
 * @param appliedClipThreshold with decidedLocally: the threshold the client clipped the update to (0:
 *                       not clipped); the record shows it rather than what the clip rule would choose now
 */
public record StepReport(
        String runId,
        int rank,
        long step,
        double loss,
        boolean lossAbsent,
        double gradNorm,
        double[] groupGradNorms,
        double learningRate,
        double lossScale,
        List<String> moduleNames,
        boolean[] moduleFinite,
        double[] moduleMaxAbs,
        Duration stepTime,
        boolean decidedLocally,
        boolean skippedByAgreement,
        double appliedClipThreshold) {

    /** A report without a clip the client applied itself. */
    public StepReport(String runId, int rank, long step, double loss, boolean lossAbsent, double gradNorm,
                      double[] groupGradNorms, double learningRate, double lossScale, List<String> moduleNames,
                      boolean[] moduleFinite, double[] moduleMaxAbs, Duration stepTime, boolean decidedLocally,
                      boolean skippedByAgreement) {
        this(runId, rank, step, loss, lossAbsent, gradNorm, groupGradNorms, learningRate, lossScale, moduleNames,
                moduleFinite, moduleMaxAbs, stepTime, decidedLocally, skippedByAgreement, 0.0);
    }

    /** A report of a step this rank's device gate did not skip on another rank's account. */
    public StepReport(String runId, int rank, long step, double loss, boolean lossAbsent, double gradNorm,
                      double[] groupGradNorms, double learningRate, double lossScale, List<String> moduleNames,
                      boolean[] moduleFinite, double[] moduleMaxAbs, Duration stepTime, boolean decidedLocally) {
        this(runId, rank, step, loss, lossAbsent, gradNorm, groupGradNorms, learningRate, lossScale, moduleNames,
                moduleFinite, moduleMaxAbs, stepTime, decidedLocally, false);
    }

    public boolean hasModuleStats() {
        return moduleFinite.length > 0 || moduleMaxAbs.length > 0;
    }
}
