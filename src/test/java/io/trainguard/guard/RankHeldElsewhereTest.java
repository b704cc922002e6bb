package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.RunSetup;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.model.Verdict;
import java.time.Duration;
import org.junit.jupiter.api.Test;

/** OpenRun for a rank that another trainer process still holds (RankTracks.otherHolder). */
class RankHeldElsewhereTest {
    private final InMemoryJournal journal = new InMemoryJournal();
    private final GuardedRuns guard = service(journal, new Fixtures.Checkpoints());

    private void healthySteps(String run, long from, long to) {
        for (long s = from; s < to; s++) {
            Verdict v = guard.report(step(run, 0, s, 2.0, 0.5));
            assertTrue(v.action() == Action.APPLY, "step " + s + " should apply: " + v);
        }
    }

    private static RunSetup setupAs(String run, String trainerInstance) {
        RunSetup s = setup(run, 0, 1, b -> b);
        return new RunSetup(s.runId(), s.rank(), s.worldSize(), s.policyOverrides(),
                s.parameterGroups(), s.watchedModules(), s.precision(), trainerInstance);
    }

    private static boolean warnsOfAnotherProcess(GuardedRuns.OpenResult opened, String holder) {
        return opened.findings().stream().anyMatch(f -> f.code().equals("RANK_HELD_BY_ANOTHER_PROCESS")
                && f.message().contains("'" + holder + "'"));
    }

    @Test
    void open_aRankAnotherLiveProcessHolds_warnsButARestartOrTheSameProcessDoesNot() {
        // Prevents: two processes training under one run id (a run name hard-coded in a script run twice,
        // processes that all think they are rank 0) merged silently, evicting each other's snapshots.
        String run = "shared-rank";
        guard.open(setupAs(run, "trainer-A"));
        healthySteps(run, 0, 3);
        GuardedRuns.OpenResult second = guard.open(setupAs(run, "trainer-B"));
        assertTrue(warnsOfAnotherProcess(second, "trainer-A"), second.findings().toString());
        assertTrue(journal.incidents.stream().anyMatch(i -> i.message().contains("RANK_HELD_BY_ANOTHER_PROCESS")));
        // the same process opening again (after losing the sidecar) is no second process
        assertTrue(guard.open(setupAs(run, "trainer-B")).findings().isEmpty());
        // a holder not heard from for longer than the window has exited: a restart after a crash
        Fixtures.NANOS.addAndGet(Duration.ofSeconds(61).toNanos());
        assertTrue(guard.open(setupAs(run, "trainer-C")).findings().isEmpty());
    }

    @Test
    void open_aRankAnEarlierGuardOfTheSameProcessHeld_isSaidAsATakeOverNotAsAnotherProcess() {
        // prevents: a retry in one process (Lightning's fit(ckpt_path="last") after a crash, as the docs
        // recommend) told that "another trainer process" holds the rank and to use its own run id
        String run = "retry-in-process";
        guard.open(setupAs(run, "vm:2791:aaaa1111"));
        healthySteps(run, 0, 3);
        GuardedRuns.OpenResult retry = guard.open(setupAs(run, "vm:2791:bbbb2222"));
        assertTrue(retry.findings().size() == 1, retry.findings().toString());
        var said = retry.findings().get(0);
        assertTrue(said.code().equals("RANK_REOPENED_IN_PROCESS") && said.severity() == Severity.INFO, said.toString());
        assertTrue(said.message().contains("earlier Guard of this process ('vm:2791:aaaa1111'"), said.message());
        // another pid on the same host, or another host with the same pid, is another process
        assertTrue(warnsOfAnotherProcess(guard.open(setupAs(run, "vm:2792:cccc3333")), "vm:2791:bbbb2222"));
        assertTrue(warnsOfAnotherProcess(guard.open(setupAs(run, "vm2:2792:dddd4444")), "vm:2792:cccc3333"));
    }
}
