package io.trainguard.guard.detect;

import java.util.List;

/**
 * One check of a step. It adds its findings (none when the step looks fine to it) and may update
 * its own statistics; it never decides the verdict: {@code run.StepFold} folds all findings into
 * one. Adding a detector: implement this in one file and add it to {@link Detectors#PIPELINE}.
 */
@FunctionalInterface
public interface Detector {
    void inspect(StepContext step, List<Finding> out);
}
