package io.trainguard.guard;

import static io.trainguard.guard.Fixtures.service;
import static io.trainguard.guard.Fixtures.setup;
import static io.trainguard.guard.Fixtures.step;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.checkpoint.CheckpointFileSpec;
import io.trainguard.checkpoint.CheckpointFormat;
import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.checkpoint.CheckpointState;
import io.trainguard.checkpoint.FileVerifier;
import io.trainguard.checkpoint.InMemoryCheckpointStore;
import io.trainguard.checkpoint.RegistryCatalog;
import io.trainguard.guard.model.Action;
import io.trainguard.service.CheckpointIntake;
import java.nio.file.Path;
import java.time.Clock;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The in-memory snapshot a run starts from is known-good at once; one registered later is not, restart or no restart. */
class StartSnapshotAcrossRestartTest {
    @TempDir
    Path root;
    private final InMemoryJournal journal = new InMemoryJournal();
    private final InMemoryCheckpointStore store = new InMemoryCheckpointStore();
    private FileVerifier files;

    @BeforeEach
    void setUp() {
        files = new FileVerifier(root, 1, 8);
    }

    @AfterEach
    void tearDown() {
        files.close();
    }

    /** One sidecar process: the engine and the registry it counts steps into, over the shared journal and store. */
    private record Sidecar(GuardedRuns guard, CheckpointRegistry registry, CheckpointIntake intake) {
    }

    private Sidecar start() {
        CheckpointRegistry registry = new CheckpointRegistry(store, files.verifier, files.paths, 3, Clock.systemUTC());
        GuardedRuns guard = service(journal, new RegistryCatalog(registry));
        guard.restore(512);
        return new Sidecar(guard, registry, new CheckpointIntake(guard, registry));
    }

    private static List<CheckpointFileSpec> slot(String name) {
        return List.of(new CheckpointFileSpec(name, null, 0));
    }

    @Test
    void register_memoryBeforeAnyStep_knownGoodAtOnce() {
        // prevents: a run that diverges at step 1 or 2 having nothing to roll back to (issue 16)
        Sidecar s = start();
        s.guard().open(setup("r1", 0, 1, null));
        var status = s.intake().register("r1", 0, CheckpointFormat.MEMORY, slot("memory://p1/rank0/slot0"), 0);
        assertEquals(CheckpointState.KNOWN_GOOD, status.record().state());
    }

    @Test
    void register_memoryAfterRestartBeforeNextReport_notKnownGoodWithoutHealthySteps() {
        // prevents: a sidecar restart making the first snapshot of a run at step 40 a rollback target
        // with no healthy step behind it (the restarted registry has counted no step of the run)
        Sidecar before = start();
        before.guard().open(setup("r1", 0, 1, null));
        for (long s = 0; s <= 40; s++) {
            assertEquals(Action.APPLY, before.guard().report(step("r1", 0, s, 2.0, 0.5)).action());
        }
        Sidecar after = start();
        assertTrue(after.guard().run("r1").lastStep() >= 0, "the journal says the run has decided steps");
        var status = after.intake().register("r1", 41, CheckpointFormat.MEMORY, slot("memory://p2/rank0/slot0"), 41);
        assertEquals(CheckpointState.VERIFIED, status.record().state());
        assertTrue(after.registry().newestKnownGood("r1").isEmpty());
        // it earns its promotion by the usual rule
        int required = after.guard().run("r1").policy().knownGoodHealthySteps();
        for (long s = 42; s <= 41 + required; s++) {
            assertEquals(Action.APPLY, after.guard().report(step("r1", 0, s, 2.0, 0.5)).action());
        }
        assertEquals(CheckpointState.KNOWN_GOOD, after.registry().get(status.record().id()).state());
    }
}
