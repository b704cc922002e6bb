package io.trainguard.reliability;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.StatusRuntimeException;
import io.trainguard.PackagedSidecar;
import io.trainguard.api.Sidecar;
import io.trainguard.api.grpc.v1.Action;
import io.trainguard.api.grpc.v1.CheckpointFile;
import io.trainguard.api.grpc.v1.CheckpointFormat;
import io.trainguard.api.grpc.v1.CheckpointState;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.Policy;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import io.trainguard.api.grpc.v1.RunState;
import io.trainguard.tensor.format.SafetensorsWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * kill -9 of the packaged sidecar while 3 runs x 4 ranks report NaN steps as fast as they can, past
 * a known-good checkpoint: every SKIP, ROLLBACK and HALT verdict a rank received is in the journal
 * after the kill, and the restarted sidecar continues each run in its journaled state.
 */
class KillUnderLoadIT {
    static final int RUNS = 3;
    static final int WORLD = 4;

    // Prevents: a course-changing verdict acknowledged to a trainer but lost by a hard kill.
    @Test
    void killDashNine_multiRankSkipAndRollbackLoad_noAcknowledgedCourseChangeLost(@TempDir Path dir) throws Exception {
        Path roots = Files.createDirectories(dir.resolve("ckpt"));
        Path clean = new SafetensorsWriter().f32("w", 1, 2, 3).f32("b", 0.5f).write(roots.resolve("good.safetensors"));
        Set<String> acked = ConcurrentHashMap.newKeySet();
        Map<String, Integer> ackedByAction = new ConcurrentHashMap<>();
        Set<String> runsTurned = ConcurrentHashMap.newKeySet(); // runs a rank was told ROLLBACK or HALT
        List<String> runs = new ArrayList<>();
        List<String> failures = java.util.Collections.synchronizedList(new ArrayList<>());
        try (PackagedSidecar sidecar = new PackagedSidecar(dir).withJvmArgs("-Dtrainguard.checkpoint.roots=" + roots).start();
             Sidecar setup = new Sidecar(sidecar.port)) {
            for (int i = 0; i < RUNS; i++) {
                String run = Sidecar.newRunId("kill-load");
                runs.add(run);
                for (int rank = 0; rank < WORLD; rank++) {
                    setup.withDeadline().openRun(OpenRunRequest.newBuilder().setRunId(run).setRank(rank).setWorldSize(WORLD)
                            .setTrainerInstance("t").setPolicy(Policy.newBuilder().setKnownGoodHealthySteps(5)).build());
                }
                setup.withDeadline().registerCheckpoint(RegisterCheckpointRequest.newBuilder().setRunId(run).setStep(0)
                        .setFormat(CheckpointFormat.CHECKPOINT_FORMAT_SAFETENSORS)
                        .addFiles(CheckpointFile.newBuilder().setPath(clean.toString())).build());
                for (long s = 1; s <= 12; s++) {
                    for (int rank = 0; rank < WORLD; rank++) {
                        setup.report(run, rank, s, 2.0, 0.5);
                    }
                }
                awaitKnownGood(setup, run);
            }
            List<Thread> trainers = new ArrayList<>();
            for (String run : runs) {
                for (int rank = 0; rank < WORLD; rank++) {
                    int r = rank;
                    Thread t = new Thread(() -> {
                        try (Sidecar me = new Sidecar(sidecar.port)) {
                            for (long s = 13; ; s++) {
                                // NaN every step after a few healthy ones: SKIP x3, then ROLLBACK (pending)
                                Action a = me.report(run, r, s, s % 7 == 0 ? 2.0 : Double.NaN, 0.5).getAction();
                                if (a == Action.ACTION_SKIP || a == Action.ACTION_ROLLBACK || a == Action.ACTION_HALT) {
                                    acked.add(run + "#" + r + "#" + s + "#" + a.name().substring(7));
                                    ackedByAction.merge(a.name().substring(7), 1, Integer::sum);
                                    if (a != Action.ACTION_SKIP) {
                                        runsTurned.add(run);
                                    }
                                }
                            }
                        } catch (StatusRuntimeException killed) {
                            // the sidecar was killed under us: what was acknowledged is counted
                            failures.add(killed.getStatus().toString());
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                        }
                    });
                    t.start();
                    trainers.add(t);
                }
            }
            // kill mid-flight once there is something to lose: enough SKIPs and ROLLBACKs acknowledged,
            // and every run turned (a run whose ranks the machine has not scheduled yet is still DEGRADED)
            long deadline = System.nanoTime() + 90_000_000_000L;
            while (System.nanoTime() < deadline && (acked.size() < 60 || ackedByAction.getOrDefault("ROLLBACK", 0) < 8
                    || runsTurned.size() < RUNS)) {
                Thread.sleep(50);
            }
            sidecar.killHard();
            for (Thread t : trainers) {
                t.join(30_000);
            }
        }
        Set<String> journaled = new HashSet<>();
        try (Connection c = DriverManager.getConnection("jdbc:sqlite:" + dir.resolve("journal.db"));
             Statement st = c.createStatement();
             ResultSet rs = st.executeQuery("SELECT run_id, rank, step, action FROM steps WHERE action IN ('SKIP','ROLLBACK','HALT')")) {
            while (rs.next()) {
                journaled.add(rs.getString(1) + "#" + rs.getInt(2) + "#" + rs.getLong(3) + "#" + rs.getString(4));
            }
        }
        Set<String> lost = new HashSet<>(acked);
        lost.removeAll(journaled);
        System.out.println("[kill-9] acknowledged course-changing verdicts=" + acked.size() + " by action="
                + new TreeMap<>(ackedByAction) + " journaled=" + journaled.size() + " lost=" + lost.size());
        assertTrue(ackedByAction.getOrDefault("ROLLBACK", 0) > 0, "no ROLLBACK verdict under load: " + ackedByAction);
        assertTrue(ackedByAction.getOrDefault("SKIP", 0) > 0, "no SKIP verdict under load: " + ackedByAction);
        assertEquals(Set.of(), lost, "acknowledged but not journaled");
        try (PackagedSidecar again = new PackagedSidecar(dir).withJvmArgs("-Dtrainguard.checkpoint.roots=" + roots).start();
             Sidecar client = new Sidecar(again.port)) {
            for (String run : runs) {
                RunState state = client.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getRun().getState();
                assertTrue(state == RunState.RUN_STATE_ROLLING_BACK || state == RunState.RUN_STATE_HALTED, run + " " + state);
            }
        }
    }

    static void awaitKnownGood(Sidecar client, String run) throws InterruptedException {
        for (int i = 0; i < 300; i++) {
            var cps = client.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getCheckpointsList();
            if (!cps.isEmpty() && cps.get(0).getState() == CheckpointState.CHECKPOINT_STATE_KNOWN_GOOD) {
                return;
            }
            Thread.sleep(100);
        }
        throw new AssertionError("checkpoint of " + run + " never became KNOWN_GOOD");
    }
}
