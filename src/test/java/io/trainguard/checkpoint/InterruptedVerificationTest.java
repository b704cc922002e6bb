package io.trainguard.checkpoint;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.tensor.format.SafetensorsWriter;
import java.nio.file.Path;
import java.time.Clock;
import java.time.Instant;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** What a start does with verifications a previous process did not finish. */
class InterruptedVerificationTest {
    @TempDir
    Path root;
    private FileVerifier files;

    @BeforeEach
    void setUp() {
        files = new FileVerifier(root, 1, 4);
    }

    @AfterEach
    void tearDown() {
        files.close();
    }

    private CheckpointRecord verifying(String id, String reason) throws Exception {
        Path p = new SafetensorsWriter().f32("w", 1, 2).write(root.resolve(id + ".safetensors"));
        Instant now = Instant.now();
        return new CheckpointRecord(id, "run", 10, CheckpointFormat.SAFETENSORS,
                List.of(new CheckpointFileSpec(p.toString(), null, 0)), 0, CheckpointState.VERIFYING, reason, now, now,
                0, 10, -1, Map.of(), List.of(), 0, 0);
    }

    // Prevents: the crash loop where a checkpoint that kills the sidecar during verification is
    // queued again at every start, so the sidecar never becomes ready.
    @Test
    void resumePending_interruptedTwice_recordedAsFailedAndNotRetried() throws Exception {
        InMemoryCheckpointStore store = new InMemoryCheckpointStore();
        store.insert(verifying("ckpt-twice", CheckpointRegistry.RETRY_REASON));
        CheckpointRegistry reg = new CheckpointRegistry(store, files.verifier, files.paths, 5, Clock.systemUTC());
        reg.resumePending();
        CheckpointRecord r = reg.get("ckpt-twice");
        assertEquals(CheckpointState.UNVERIFIABLE, r.state());
        assertTrue(r.stateReason().contains("failed twice"), r.stateReason());
        assertEquals(CheckpointState.UNVERIFIABLE, store.loadAll().get(0).state(), "the outcome is journaled");
    }

    // Prevents: an interrupted verification being dropped instead of tried once more.
    @Test
    void resumePending_interruptedOnce_triedAgainAndVerified() throws Exception {
        InMemoryCheckpointStore store = new InMemoryCheckpointStore();
        store.insert(verifying("ckpt-once", ""));
        CheckpointRegistry reg = new CheckpointRegistry(store, files.verifier, files.paths, 5, Clock.systemUTC());
        reg.resumePending();
        for (int i = 0; i < 500 && reg.get("ckpt-once").state() == CheckpointState.VERIFYING; i++) {
            Thread.sleep(10);
        }
        assertEquals(CheckpointState.VERIFIED, reg.get("ckpt-once").state(), reg.get("ckpt-once").stateReason());
    }
}
