package io.trainguard;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.api.Sidecar;
import io.trainguard.api.grpc.v1.Action;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.IncidentKind;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.RunState;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** kill -9 of the packaged sidecar mid-run: every run and incident is still there and the run continues. */
class JournalSurvivesKillIT {

    @Test
    void killDashNine_midRun_runIncidentsAndSkipStreakSurvive(@TempDir Path dir) throws Exception {
        String run = "kill9-run";
        long pidBefore;
        try (PackagedSidecar first = new PackagedSidecar(dir).start(); Sidecar client = new Sidecar(first.port)) {
            client.open(run, 0, 1);
            for (int s = 0; s < 40; s++) {
                client.report(run, 0, s, 2.0, 0.5);
            }
            // Two course-changing verdicts: durable before they were returned.
            assertEquals(Action.ACTION_SKIP, client.report(run, 0, 40, Double.NaN, 0.5).getAction());
            assertEquals(Action.ACTION_SKIP, client.report(run, 0, 41, 2.0, Double.POSITIVE_INFINITY).getAction());
            pidBefore = first.pid();
            first.killHard();
        }
        try (PackagedSidecar second = new PackagedSidecar(dir).start(); Sidecar client = new Sidecar(second.port)) {
            assertTrue(second.pid() != pidBefore);
            var view = client.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build());
            assertEquals(41, view.getRun().getLastStep());
            assertEquals(RunState.RUN_STATE_DEGRADED, view.getRun().getState());
            assertEquals(2, view.getRun().getConsecutiveSkips());
            assertEquals(IncidentKind.INCIDENT_KIND_NON_FINITE_GRAD, view.getIncidents(0).getKind());
            assertEquals(IncidentKind.INCIDENT_KIND_NON_FINITE_LOSS, view.getIncidents(1).getKind());
            // The trainer re-opens after the sidecar restart: the run resumes, it is not reset.
            var reopened = client.withDeadline().openRun(OpenRunRequest.newBuilder().setRunId(run).setWorldSize(1)
                    .setTrainerInstance("same-trainer").build());
            assertTrue(reopened.getResumed());
            // The skip streak continued across the restart: the 4th skip in a row exceeds the limit of 3.
            assertEquals(Action.ACTION_SKIP, client.report(run, 0, 42, Double.NaN, 0.5).getAction());
            assertEquals(Action.ACTION_HALT, client.report(run, 0, 43, Double.NaN, 0.5).getAction());
            assertEquals(503, second.status("/q/health/group/training"));
        }
    }
}
