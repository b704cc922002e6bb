package io.trainguard.guard.run;

import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.model.StepReport;
import java.util.List;

/** Shape checks of a step report. NaN values are data and pass; inconsistent structure does not. */
final class ReportValidation {
    static final int MAX_MODULES = 100_000;

    private ReportValidation() {
    }

    static void validate(StepReport r, int worldSize, List<String> watchedModules) {
        if (r.step() < 0) {
            throw new InvalidRequestException("step must be >= 0, got " + r.step() + ": report the optimizer step counter");
        }
        if (r.rank() < 0 || r.rank() >= worldSize) {
            throw new InvalidRequestException("rank " + r.rank() + " is outside world size " + worldSize + " of run '"
                    + r.runId() + "': ranks are 0.." + (worldSize - 1));
        }
        if (r.skippedByAgreement() && worldSize < 2) {
            throw new InvalidRequestException("skipped_by_agreement is set but run '" + r.runId() + "' has world size "
                    + worldSize + ": only several ranks skip an update together; open the run with its world size");
        }
        int finite = r.moduleFinite().length;
        int maxAbs = r.moduleMaxAbs().length;
        int names = r.moduleNames().size();
        if (Math.max(Math.max(finite, maxAbs), names) > MAX_MODULES) {
            throw new InvalidRequestException("module_stats has more than " + MAX_MODULES + " entries: watch blocks, not every module");
        }
        if (!r.hasModuleStats() && names == 0) {
            return;
        }
        int expected = names > 0 ? names : watchedModules.size();
        if (expected == 0) {
            throw new InvalidRequestException("module_stats carries " + Math.max(finite, maxAbs) + " entries but no module "
                    + "names: send module_stats.names or declare model.watched_modules in OpenRun");
        }
        if (finite != 0 && finite != expected || maxAbs != 0 && maxAbs != expected || finite == 0 && maxAbs == 0) {
            throw new InvalidRequestException("module_stats is inconsistent: " + expected + " module names"
                    + (names > 0 ? "" : " (declared at OpenRun)") + ", " + finite + " finite flags, " + maxAbs
                    + " max_abs values; send one finite flag and/or one max_abs per module, in forward order");
        }
    }
}
