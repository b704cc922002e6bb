package io.trainguard.report;

import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import java.util.List;

/**
 * Everything the report builder reads, gathered by the caller from the engine and the journal.
 *
 * @param runIncidents every incident of the run, any order
 * @param trend        the steps of the incident's rank before it, oldest first:
 *                     {step, loss, gradNorm, learningRate, lossScale} (NaN where not reported)
 * @param dataPosition the data position of the newest checkpoint at or before the step (-1: none)
 */
public record Evidence(RunSnapshot run, List<Incident> runIncidents, List<double[]> trend, long dataPosition) {
}
