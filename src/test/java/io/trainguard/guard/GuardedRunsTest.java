package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.ClipMode;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RollbackPlan;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.Verdict;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;

class GuardedRunsTest {
    private final InMemoryJournal journal = new InMemoryJournal();
    private final Fixtures.Checkpoints checkpoints = new Fixtures.Checkpoints();
    private final GuardedRuns guard = service(journal, checkpoints);

    private void healthySteps(String run, long from, long to) {
        Random noise = new Random(7);
        for (long s = from; s < to; s++) {
            Verdict v = guard.report(step(run, 0, s, 2.0 + 0.05 * noise.nextGaussian(), 0.5 + 0.02 * noise.nextGaussian()));
            assertTrue(v.action() == Action.APPLY, "step " + s + " should apply: " + v);
        }
    }

    @Test
    void report_gradNormAboveFixedThreshold_clipsToThreshold() {
        guard.open(setup("r1", 0, 1, null));
        Verdict v = guard.report(step("r1", 0, 0, 1.0, 3.0));
        assertEquals(Action.CLIP, v.action());
        assertEquals(1.0, v.clipThreshold());
    }

    @Test
    void aHaltWhileACheckpointIsStillOnItsWayToKnownGood_namesIt_insteadOfAskingToRegisterOne() {
        // prevents: "No known-good checkpoint exists ... register checkpoints with RegisterCheckpoint" told to a
        // trainer whose checkpoint was registered and still verifying when the burst came
        guard.open(setup("r1", 0, 1, null));
        checkpoints.pending = new CheckpointCatalog.PendingTarget("ckpt-10-ab", 10, "VERIFYING", 0, 50);
        for (int s = 0; s < 3; s++) {
            guard.report(step("r1", 0, s, Double.NaN, 1));
        }
        Verdict v = guard.report(step("r1", 0, 3, Double.NaN, 1));
        assertEquals(Action.HALT, v.action());
        String why = String.join(" ", v.reasons());
        assertTrue(why.contains("checkpoint ckpt-10-ab (step 10) is registered but not verified yet (VERIFYING)"), why);
        assertTrue(!why.contains("register checkpoints ("), why);
    }

    @Test
    void aRollbackNeverGoesForwardToACheckpointAtOrPastTheFailingStep() {
        // prevents: a trainer restarted from an older checkpoint under the same run id rolled back "forward" to
        // the crashed process's later checkpoint, resumed past the trigger, and was ordered back at every step
        guard.open(setup("r1", 0, 1, null));
        checkpoints.knownGood = new CheckpointCatalog.RollbackTarget("ckpt-24", 24, List.of("/c/step-24"), 25);
        checkpoints.older = new CheckpointCatalog.RollbackTarget("ckpt-4", 4, List.of("/c/step-4"), 5);
        healthySteps("r1", 10, 20);
        for (long s = 20; s < 23; s++) {
            guard.report(step("r1", 0, s, Double.NaN, 1));
        }
        Verdict v = guard.report(step("r1", 0, 23, Double.NaN, 1));
        assertEquals(Action.ROLLBACK, v.action());
        assertEquals(4, v.rollback().checkpointStep(), v.toString());
        assertEquals(Action.APPLY, guard.report(step("r1", 0, 5, 2.0, 0.5)).action(), "resumed and confirmed");
    }

    @Test
    void report_moreThanMaxConsecutiveSkipsWithoutCheckpoint_halts() {
        guard.open(setup("r1", 0, 1, null));
        for (int s = 0; s < 3; s++) {
            assertEquals(Action.SKIP, guard.report(step("r1", 0, s, Double.NaN, 1)).action());
        }
        Verdict v = guard.report(step("r1", 0, 3, Double.NaN, 1));
        assertEquals(Action.HALT, v.action());
        assertEquals(RunState.HALTED, v.runState());
        assertTrue(v.reasons().stream().anyMatch(r -> r.contains("No known-good checkpoint")), v.reasons().toString());
        // said in the calls a trainer makes (a Lightning user cannot act on a gRPC method's name alone)
        assertTrue(v.reasons().stream().anyMatch(r -> r.contains("guard.save_checkpoint") && r.contains("ModelCheckpoint")
                && r.contains("in-memory snapshots on")), v.reasons().toString());
        Verdict after = guard.report(step("r1", 0, 4, 1.0, 0.5));
        assertEquals(Action.HALT, after.action(), "a halted run stays halted");
        assertTrue(after.reasons().stream().anyMatch(r -> r.contains("trainguard resume r1") && r.contains("/api/runs/r1/resume")
                && r.contains("new run id")), "a halted run says how to go on: " + after.reasons());
    }

    @Test
    void report_moreThanMaxConsecutiveSkipsWithKnownGood_rollsBackWithPlan() {
        guard.open(setup("r1", 0, 1, null));
        healthySteps("r1", 0, 30);
        checkpoints.knownGood = new CheckpointCatalog.RollbackTarget("ck-20", 20, List.of("/ck/20.safetensors"), 20);
        for (int s = 30; s < 33; s++) {
            guard.report(step("r1", 0, s, Double.NaN, 1));
        }
        Verdict v = guard.report(step("r1", 0, 33, Double.NaN, 1));
        assertEquals(Action.ROLLBACK, v.action());
        assertEquals(RunState.ROLLING_BACK, v.runState());
        RollbackPlan plan = v.rollback();
        assertNotNull(plan);
        assertEquals("ck-20", plan.checkpointId());
        assertEquals(13, plan.skipBatches(), "skip the batches between the checkpoint and the trouble");
        assertEquals(0.5, plan.lrFactor());
        assertEquals(1, plan.attempt());
        // A late report for a step past the trigger gets the same plan again.
        assertEquals(Action.ROLLBACK, guard.report(step("r1", 0, 34, 1.0, 0.5)).action());
        // Steps go backwards after the restore: legal, and the run continues DEGRADED.
        Verdict after = guard.report(step("r1", 0, 21, 2.0, 0.5));
        assertEquals(Action.APPLY, after.action());
        assertEquals(RunState.DEGRADED, after.runState());
    }

    @Test
    void aRollbackConfirmedFromAnOlderStateThanOrdered_recordsTheStateTheTrainerResumedFrom() {
        // prevents: the record naming the ordered checkpoint when the trainer's loader fell back to an older one
        // (the ordered file deleted by rotation after it was verified): the run trains from a state not recorded
        guard.open(setup("r1", 0, 1, null));
        healthySteps("r1", 0, 30);
        checkpoints.knownGood = new CheckpointCatalog.RollbackTarget("ck-20", 20, List.of("/ck/20.safetensors"), 20);
        for (int s = 30; s < 34; s++) {
            guard.report(step("r1", 0, s, Double.NaN, 1));
        }
        assertEquals(RunState.ROLLING_BACK, guard.report(step("r1", 0, 34, 1.0, 0.5)).runState());
        assertEquals(Action.APPLY, guard.report(step("r1", 0, 11, 2.0, 0.5)).action());  // resumed after step 10
        Incident confirmed = journal.incidents.get(journal.incidents.size() - 1);
        assertEquals(IncidentKind.ROLLBACK, confirmed.kind());
        assertTrue(confirmed.message().contains("restored an older state (step 10) instead"), confirmed.message());
        guard.report(step("r1", 0, 12, 2.0, 0.5));
        healthySteps("r1", 13, 40);
        for (int s = 40; s < 44; s++) {
            guard.report(step("r1", 0, s, Double.NaN, 1));
        }
        guard.report(step("r1", 0, 44, 1.0, 0.5));
        guard.report(step("r1", 0, 21, 2.0, 0.5));  // resumed where ordered: said as before
        Incident asOrdered = journal.incidents.get(journal.incidents.size() - 1);
        assertTrue(asOrdered.message().endsWith("first report at step 21; re-warming"), asOrdered.message());
    }

    @Test
    void report_repeatedRollbacksPastCap_haltsWithActionableReason() {
        guard.open(setup("r1", 0, 1, null));
        healthySteps("r1", 0, 25);
        checkpoints.knownGood = new CheckpointCatalog.RollbackTarget("ck-20", 20, List.of("/ck/20.safetensors"), 20);
        long s = 25;
        for (int attempt = 1; attempt <= 2; attempt++) {
            Verdict v = null;
            for (int i = 0; i < 4; i++) {
                v = guard.report(step("r1", 0, s++, Double.NaN, 1));
            }
            assertEquals(Action.ROLLBACK, v.action());
            assertEquals(attempt, v.rollback().attempt());
            assertEquals(Math.pow(0.5, attempt), v.rollback().lrFactor(), 1e-12, "LR backs off further each time");
            s = 21;
        }
        Verdict v = null;
        for (int i = 0; i < 4; i++) {
            v = guard.report(step("r1", 0, s++, Double.NaN, 1));
        }
        assertEquals(Action.HALT, v.action());
        assertTrue(v.reasons().stream().anyMatch(r -> r.contains("lower the learning rate")), v.reasons().toString());
    }

    @Test
    void report_lossSpikeAfterWarmup_skipsByDefaultPolicy() {
        guard.open(setup("r1", 0, 1, null));
        healthySteps("r1", 0, 40);
        Verdict v = guard.report(step("r1", 0, 40, 9.0, 0.5));
        assertEquals(Action.SKIP, v.action());
        assertTrue(v.reasons().get(0).contains("loss spike"), v.reasons().toString());
        assertEquals(IncidentKind.LOSS_SPIKE, journal.incidents.get(journal.incidents.size() - 1).kind());
    }

    @Test
    void report_steadyDivergence_rollsBackOrHalts() {
        // A too-high LR drifts the loss up step by step; no single step is a 6-sigma spike.
        guard.open(setup("r1", 0, 1, b -> {
            b.spikeZThreshold = 50;
            return b;
        }));
        healthySteps("r1", 0, 30);
        Action last = Action.APPLY;
        long s = 30;
        double loss = 2.0;
        while (last != Action.HALT && s < 200) {
            loss *= 1.08;
            last = guard.report(step("r1", 0, s++, loss, 0.5)).action();
        }
        assertEquals(Action.HALT, last, "divergence escalates (no checkpoint: HALT)");
        assertTrue(s < 80, "divergence detected within ~40 steps, took " + (s - 30));
    }

    @Test
    void report_healthyNoisyRun_neverFires() {
        // The false-positive guard: realistic noise with warm-up and decay must not trigger anything.
        guard.open(setup("r1", 0, 1, b -> {
            b.clipMode = ClipMode.OFF;
            return b;
        }));
        Random noise = new Random(42);
        for (int s = 0; s < 2000; s++) {
            double base = 4.0 * Math.exp(-s / 800.0) + 1.0;
            double loss = base * (1 + 0.04 * noise.nextGaussian());
            double grad = 0.8 * (1 + 0.1 * noise.nextGaussian());
            assertEquals(Action.APPLY, guard.report(step("r1", 0, s, loss, grad)).action(), "step " + s);
        }
        assertTrue(journal.incidents.isEmpty(), journal.incidents.toString());
    }

    @Test
    void report_validationGate_deferredUntilWarmupThenOnceAnInterval() {
        guard.open(setup("r1", 0, 1, null));
        Random noise = new Random(1);
        for (int s = 0; s <= 12; s++) {
            Verdict v = guard.report(step("r1", 0, s, 2 + 0.01 * noise.nextGaussian(), 0.5));
            assertEquals(s >= 10, v.validationAllowed(), "step " + s);
        }
        // at the loop's own offset (12, not a multiple of 5), and again for another rank's request
        assertTrue(guard.beginValidation("r1", 0, 12).allowed());
        assertTrue(guard.beginValidation("r1", 0, 12).allowed());
        GuardedRuns.ValidationGate early = guard.beginValidation("r1", 0, 15);
        assertFalse(early.allowed());
        assertTrue(early.reason().contains("at most every 5 steps") && early.reason().contains("until step 17"),
                early.reason());
        for (int s = 13; s <= 20; s++) {
            Verdict v = guard.report(step("r1", 0, s, 2 + 0.01 * noise.nextGaussian(), 0.5));
            assertEquals(s >= 17, v.validationAllowed(), "step " + s);
        }
        assertTrue(guard.beginValidation("r1", 0, 11).allowed(), "a step before the last one: a rewound timeline");
        guard.report(step("r1", 0, 21, Double.NaN, 0.5));
        GuardedRuns.ValidationGate degraded = guard.beginValidation("r1", 0, 25);
        assertFalse(degraded.allowed(), "no validation while degraded");
        for (int s = 22; s <= 50; s++) {
            guard.report(step("r1", 0, s, 2 + 0.01 * noise.nextGaussian(), 0.5));
        }
        // the other ranks asking at step 25 hear what the first request heard, though the run recovered since:
        // ranks agree without a collective (a loop validating on rank 0 only has none to join)
        GuardedRuns.ValidationGate again = guard.beginValidation("r1", 0, 25);
        assertFalse(again.allowed());
        assertEquals(degraded.reason(), again.reason());
        assertTrue(guard.beginValidation("r1", 0, 50).allowed(), "recovered: a later step may validate");
    }

    @Test
    void report_badShapes_rejectedWithActionableMessage() {
        guard.open(setup("r1", 0, 2, null));
        var e = assertThrows(InvalidRequestException.class, () -> guard.report(step("r1", 0, -1, 1, 1)));
        assertTrue(e.getMessage().contains("step must be >= 0"));
        e = assertThrows(InvalidRequestException.class, () -> guard.report(step("r1", 2, 1, 1, 1)));
        assertTrue(e.getMessage().contains("ranks are 0..1"));
        e = assertThrows(InvalidRequestException.class,
                () -> guard.report(Fixtures.stepWithModules("r1", 1, 1, 1, new boolean[] {true, true})));
        assertTrue(e.getMessage().contains("4 module names"), e.getMessage());
        assertThrows(RunNotFoundException.class, () -> guard.report(step("nope", 0, 1, 1, 1)));
        assertEquals(0, journal.steps.size(), "refused reports are not journaled");
    }

    @Test
    void report_afterClose_failsPrecondition() {
        guard.open(setup("r1", 0, 1, null));
        guard.report(step("r1", 0, 0, 1, 0.5));
        guard.close("r1", 0, "done");
        var e = assertThrows(PreconditionFailedException.class, () -> guard.report(step("r1", 0, 1, 1, 0.5)));
        assertTrue(e.getMessage().contains("closed"));
    }

    @Test
    void report_skipWhenJournalFails_withholdsVerdict() {
        // A course-changing verdict that is not durable must not be returned.
        guard.open(setup("r1", 0, 1, null));
        journal.failWrites = true;
        assertThrows(JournalUnavailableException.class, () -> guard.report(step("r1", 0, 0, Double.NaN, 1)));
    }

    @Test
    void restore_fromJournal_continuesRunWithStatistics() {
        guard.open(setup("r1", 0, 1, null));
        healthySteps("r1", 0, 40);
        guard.report(step("r1", 0, 40, Double.NaN, 1));
        GuardedRuns restarted = service(journal, checkpoints);
        assertEquals(1, restarted.restore(512));
        RunSnapshot s = new RunReads(restarted).view("r1", 10).run();
        assertEquals(RunState.DEGRADED, s.state());
        assertEquals(40, s.lastStep());
        assertEquals(1, s.consecutiveSkips(), "skip count is kept");
        // Statistics were replayed: a spike is still recognised right away.
        assertEquals(Action.SKIP, restarted.report(step("r1", 0, 41, 9.0, 0.5)).action());
        assertTrue(restarted.open(setup("r1", 0, 1, null)).resumed());
    }

    @Test
    void multiRank_rollbackPlanIsIdenticalForEveryRank() {
        guard.open(setup("r2", 0, 2, null));
        guard.open(setup("r2", 1, 2, null));
        checkpoints.knownGood = new CheckpointCatalog.RollbackTarget("ck", 5, List.of("/ck"), 5);
        for (int s = 10; s < 14; s++) {
            guard.report(step("r2", 1, s, Double.NaN, 1));
        }
        Verdict rank0 = guard.report(step("r2", 0, 13, 1.0, 0.5));
        Verdict rank1 = guard.report(step("r2", 1, 14, Double.NaN, 0.5));
        assertEquals(Action.ROLLBACK, rank0.action());
        assertEquals(rank0.rollback(), rank1.rollback());
    }

    @Test
    void crossRank_mismatchedGradNorms_recordsIncidentNamingRank() {
        guard.open(setup("r3", 0, 2, null));
        guard.report(step("r3", 0, 7, 1.0, 0.5));
        guard.report(step("r3", 1, 7, 1.0, 0.50001));
        Incident i = journal.incidents.get(journal.incidents.size() - 1);
        assertEquals(IncidentKind.CROSS_RANK_MISMATCH, i.kind());
        assertTrue(i.message().contains("rank 1"), i.message());
        assertTrue(i.message().contains("cannot be told from 2 ranks"), i.message()); // two ranks: no blame on a guess
    }

    @Test
    void crossRank_stepsReportedAgainAfterARollback_areNotComparedWithTheirOldNorms() {
        // prevents: a false CROSS_RANK_MISMATCH (ERROR, "silent data corruption") after every multi-rank
        // rollback, one rank's new norm for step 7 compared with the other's from before the rollback
        guard.open(setup("r5", 0, 2, null));
        guard.open(setup("r5", 1, 2, null));
        for (int s = 5; s < 8; s++) {
            guard.report(step("r5", 0, s, 1.0, 0.5));
            guard.report(step("r5", 1, s, 1.0, 0.5));
        }
        checkpoints.knownGood = new CheckpointCatalog.RollbackTarget("ck", 5, List.of("/ck"), 5);
        for (int s = 8; s < 12; s++) {
            guard.report(step("r5", 0, s, Double.NaN, 1));
            guard.report(step("r5", 1, s, Double.NaN, 1));
        }
        assertEquals(RunState.ROLLING_BACK, guard.report(step("r5", 0, 12, 1.0, 0.5)).runState());
        for (int s = 6; s < 8; s++) { // both ranks agree again, on norms unlike the ones before
            assertEquals(Action.APPLY, guard.report(step("r5", 0, s, 1.0, 0.9)).action());
            assertEquals(Action.APPLY, guard.report(step("r5", 1, s, 1.0, 0.9)).action());
        }
        assertFalse(journal.incidents.stream().anyMatch(i -> i.kind() == IncidentKind.CROSS_RANK_MISMATCH),
                journal.incidents.toString());
        guard.report(step("r5", 1, 8, 1.0, 0.95)); // and a real disagreement is still caught
        guard.report(step("r5", 0, 8, 1.0, 0.9));
        assertEquals(IncidentKind.CROSS_RANK_MISMATCH, journal.incidents.get(journal.incidents.size() - 1).kind());
    }

    @Test
    void crossRank_threeRanks_namesTheRankOutsideTheMajority() {
        // prevents: naming the healthy rank that reports after a corrupted one
        guard.open(setup("r4", 0, 3, null));
        guard.report(step("r4", 2, 7, 1.0, 0.6));
        guard.report(step("r4", 0, 7, 1.0, 0.5));
        guard.report(step("r4", 1, 7, 1.0, 0.5));
        Incident i = journal.incidents.get(journal.incidents.size() - 1);
        assertEquals(IncidentKind.CROSS_RANK_MISMATCH, i.kind());
        assertTrue(i.message().endsWith("2 of 3 reported ranks agree; suspect silent data corruption on rank 2"), i.message());
    }

    @Test
    void endValidationAndUpdatePolicy_incidentsJournaledWithRunAndAnnounced() {
        // prevents: an out-of-step-path incident that is announced but not journaled (or the reverse)
        List<Incident> heard = new java.util.ArrayList<>();
        GuardedRuns g = new GuardedRuns(journal, checkpoints, new GuardEvents() {
            @Override
            public void stepDecided(StepReport report, Verdict verdict, long decisionNanos) {
            }

            @Override
            public void incident(Incident incident) {
                heard.add(incident);
            }

            @Override
            public void stateChanged(String runId, RunState from, RunState to, String reason) {
            }
        }, Fixtures.defaults(), java.time.Clock.systemUTC(), Fixtures.NANOS::get, java.time.Duration.ofSeconds(1));
        g.open(setup("r5", 0, 1, null));
        int before = journal.incidents.size();
        var audit = new io.trainguard.guard.model.ValidationAudit(false, false, true, false, List.of("head swapped"), true);
        List<Long> ids = g.endValidation("r5", 0, 5, audit);
        Incident mutation = journal.incidents.get(before);
        assertEquals(List.of(mutation.id()), ids);
        assertEquals(IncidentKind.VALIDATION_MUTATION, mutation.kind());
        assertEquals(io.trainguard.guard.model.Severity.ERROR, mutation.severity(), "restored: ERROR, not CRITICAL");
        assertEquals(5, mutation.step());
        assertEquals(List.of(), g.endValidation("r5", 0, 6, null), "no audit: no incident");

        g.updatePolicy("r5", b -> b, "on-call");
        Incident policy = journal.incidents.get(journal.incidents.size() - 1);
        assertEquals(IncidentKind.POLICY_CHANGED, policy.kind());
        assertTrue(policy.message().startsWith("policy changed (on-call): "), policy.message());
        assertEquals(List.of(mutation, policy), heard);
    }
}
