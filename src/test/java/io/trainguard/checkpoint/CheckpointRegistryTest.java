package io.trainguard.checkpoint;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.tensor.format.SafetensorsWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Clock;
import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.sqlite.SQLiteDataSource;

class CheckpointRegistryTest {
    @TempDir
    Path root;
    private FileVerifier files;

    @BeforeEach
    void setUp() {
        files = new FileVerifier(root, 2, 8);
    }

    @AfterEach
    void tearDown() {
        files.close();
    }

    private CheckpointRegistry registry(CheckpointStore store, int n) {
        return new CheckpointRegistry(store, files.verifier, files.paths, n, Clock.systemUTC());
    }

    private CheckpointRecord awaitSettled(CheckpointRegistry reg, String id) throws InterruptedException {
        for (int i = 0; i < 500; i++) {
            CheckpointRecord r = reg.get(id);
            if (r.state() != CheckpointState.REGISTERED && r.state() != CheckpointState.VERIFYING) {
                return r;
            }
            Thread.sleep(10);
        }
        throw new AssertionError("verification did not finish");
    }

    private List<CheckpointFileSpec> file(String name, SafetensorsWriter w) throws Exception {
        return List.of(new CheckpointFileSpec(w.write(root.resolve(name)).toString(), null, 0));
    }

    private VerificationResult verify(CheckpointFormat fmt, List<CheckpointFileSpec> specs) {
        return files.verifier.verifyNow("t", fmt, specs, null);
    }

    @Test
    void verify_cleanSafetensors_verifiedWithStatsAndChecksum() throws Exception {
        // prevents: a clean checkpoint being refused, or verified without statistics
        VerificationResult r = verify(CheckpointFormat.SAFETENSORS,
                file("ok.safetensors", new SafetensorsWriter().f32("w", 1, -2).bf16("b", 0.5f).i32("step", 10)));
        assertEquals(CheckpointState.VERIFIED, r.outcome(), r.reason());
        assertEquals(3, r.tensors().size());
        assertTrue(r.fileChecksums().values().iterator().next().startsWith("tg1:"));
    }

    @Test
    void verify_nanInTensor_rejectedNamingTensorAndIndex() throws Exception {
        // prevents: a NaN checkpoint becoming a rollback target
        VerificationResult r = verify(CheckpointFormat.SAFETENSORS,
                file("nan.safetensors", new SafetensorsWriter().f32("ok", 1).f32("imageproj.proj.weight", 1, 2, Float.NaN)));
        assertEquals(CheckpointState.REJECTED, r.outcome());
        assertTrue(r.reason().contains("'imageproj.proj.weight'") && r.reason().contains("1 NaN")
                && r.reason().contains("flat index 2"), r.reason());
    }

    @Test
    void verify_torchPickle_unverifiableWithReason() throws Exception {
        // prevents: a torch.save pickle silently accepted as verified
        byte[] legacy = {(byte) 0x80, 0x02, (byte) 0x8a, 0x0a, 0x6c, (byte) 0xfc};
        Path p = Files.write(root.resolve("model.pt"), legacy);
        VerificationResult r = verify(CheckpointFormat.SAFETENSORS, List.of(new CheckpointFileSpec(p.toString(), null, 0)));
        assertEquals(CheckpointState.UNVERIFIABLE, r.outcome());
        assertTrue(r.reason().contains("torch.save pickle"), r.reason());
    }

    @Test
    void verify_sha256Mismatch_rejected() throws Exception {
        // prevents: a client checksum given and ignored
        Path p = new SafetensorsWriter().f32("w", 1).write(root.resolve("s.safetensors"));
        VerificationResult r = verify(CheckpointFormat.SAFETENSORS,
                List.of(new CheckpointFileSpec(p.toString(), "00".repeat(32), 0)));
        assertEquals(CheckpointState.REJECTED, r.outcome());
        assertTrue(r.reason().contains("sha256"), r.reason());
    }

    @Test
    void verify_registeredSizeDiffers_rejected() throws Exception {
        // prevents: verifying a file the trainer has not finished writing
        Path p = new SafetensorsWriter().f32("w", 1).write(root.resolve("z.safetensors"));
        VerificationResult r = verify(CheckpointFormat.SAFETENSORS,
                List.of(new CheckpointFileSpec(p.toString(), null, 999_999)));
        assertEquals(CheckpointState.REJECTED, r.outcome());
    }

    @Test
    void register_pathOutsideRoots_refusedAndNotRecorded() {
        // prevents: recording (and later reading) a file outside the checkpoint roots
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 2);
        assertThrows(PathRefusedException.class, () -> reg.register("run", 10, CheckpointFormat.SAFETENSORS,
                List.of(new CheckpointFileSpec("/etc/hostname", null, 0)), 0, false));
        assertEquals(0, reg.list("run").size());
    }

    @Test
    void onHealthyStep_promotesAfterNAndNotBefore() throws Exception {
        // prevents: rollback to a checkpoint that has not proven itself with N healthy steps
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 3);
        CheckpointRecord c = reg.register("run", 100, CheckpointFormat.SAFETENSORS,
                file("c.safetensors", new SafetensorsWriter().f32("w", 1)), 5000, false);
        assertEquals(CheckpointState.VERIFIED, awaitSettled(reg, c.id()).state());
        reg.onHealthyStep("run", 99);  // before the checkpoint: does not count
        reg.onHealthyStep("run", 101);
        reg.onHealthyStep("run", 101); // re-sent: counted once
        reg.onHealthyStep("run", 102);
        assertEquals(CheckpointState.VERIFIED, reg.get(c.id()).state());
        assertTrue(reg.newestKnownGood("run").isEmpty());
        reg.onHealthyStep("run", 103);
        assertEquals(CheckpointState.KNOWN_GOOD, reg.get(c.id()).state());
        assertEquals(c.id(), reg.newestKnownGood("run").orElseThrow().id());
    }

    private static List<CheckpointFileSpec> slot(String name) {
        return List.of(new CheckpointFileSpec(name, null, 0));
    }

    @Test
    void register_memorySnapshot_promotedBySameRuleAndChosenOverOlderFile() throws Exception {
        // prevents: an in-memory snapshot skipping the known-good rule, or losing to an older file
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 2);
        CheckpointRecord file = reg.register("run", 10, CheckpointFormat.SAFETENSORS,
                file("f.safetensors", new SafetensorsWriter().f32("w", 1)), 11, false);
        awaitSettled(reg, file.id());
        reg.onHealthyStep("run", 11);
        CheckpointRecord mem = reg.register("run", 12, CheckpointFormat.MEMORY, slot("memory://p1/rank0/slot0"), 13, true);
        assertEquals(CheckpointState.VERIFIED, mem.state());
        reg.onHealthyStep("run", 12);
        assertEquals(file.id(), reg.newestKnownGood("run").orElseThrow().id());
        reg.onHealthyStep("run", 13);
        assertEquals(CheckpointState.VERIFIED, reg.get(mem.id()).state());
        reg.onHealthyStep("run", 14);
        assertEquals(CheckpointState.KNOWN_GOOD, reg.get(mem.id()).state());
        assertEquals(mem.id(), reg.newestKnownGood("run").orElseThrow().id());
    }

    @Test
    void register_memorySlotAgain_evictsPreviousSnapshotOfSlotAndOfGoneProcess() {
        // prevents: a rollback to a snapshot the trainer has overwritten, or one held by a dead process
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 0);
        CheckpointRecord a = reg.register("run", 5, CheckpointFormat.MEMORY, slot("memory://p1/rank0/slot0"), 6, false);
        CheckpointRecord b = reg.register("run", 9, CheckpointFormat.MEMORY, slot("memory://p1/rank0/slot1"), 10, false);
        assertEquals(CheckpointState.KNOWN_GOOD, reg.get(a.id()).state());
        reg.register("run", 13, CheckpointFormat.MEMORY, slot("memory://p1/rank0/slot0"), 14, false);
        assertEquals(CheckpointState.EVICTED, reg.get(a.id()).state());
        assertEquals(CheckpointState.KNOWN_GOOD, reg.get(b.id()).state());
        CheckpointRecord c = reg.register("run", 3, CheckpointFormat.MEMORY, slot("memory://p2/rank0/slot0"), 4, false);
        assertEquals(CheckpointState.EVICTED, reg.get(b.id()).state());
        assertEquals(c.id(), reg.newestKnownGood("run").orElseThrow().id());
    }

    @Test
    void evictOtherProcesses_aRestartedRank_evictsTheSnapshotsOfItsGoneProcessOnly() {
        // prevents: a restarted trainer with snapshots off ordered back to a snapshot only the dead process held
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 0);
        CheckpointRecord gone = reg.register("run", 5, CheckpointFormat.MEMORY, slot("memory://p1/rank0/slot0"), 6, false);
        reg.evictOtherProcesses("run", 1, "p2"); // another rank re-opened: not this snapshot's
        reg.evictOtherProcesses("run", 0, "p1"); // its own process re-opened (a reconnect): still held
        assertEquals(CheckpointState.KNOWN_GOOD, reg.get(gone.id()).state());
        reg.evictOtherProcesses("run", 0, "p2");
        assertEquals(CheckpointState.EVICTED, reg.get(gone.id()).state());
        assertTrue(reg.get(gone.id()).stateReason().contains("re-opened the run as p2"), reg.get(gone.id()).stateReason());
        assertTrue(reg.newestKnownGood("run").isEmpty());
    }

    @Test
    void register_memoryWithoutSlotName_refused() {
        // prevents: a memory checkpoint whose holder and slot cannot be told apart (never evicted)
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 0);
        var e = assertThrows(IllegalArgumentException.class,
                () -> reg.register("run", 1, CheckpointFormat.MEMORY, slot("/tmp/x"), 0, false));
        assertTrue(e.getMessage().contains("memory://"), e.getMessage());
        assertTrue(reg.list("run").isEmpty());
    }

    @Test
    void onUnhealthyStep_beforePromotion_neverKnownGood() throws Exception {
        // prevents: promoting a checkpoint that was followed by NaN before it proved itself
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 2);
        CheckpointRecord c = reg.register("run", 100, CheckpointFormat.SAFETENSORS,
                file("u.safetensors", new SafetensorsWriter().f32("w", 1)), 0, false);
        awaitSettled(reg, c.id());
        reg.onHealthyStep("run", 101);
        reg.onUnhealthyStep("run", 102);
        reg.onHealthyStep("run", 103);
        reg.onHealthyStep("run", 104);
        CheckpointRecord r = reg.get(c.id());
        assertEquals(CheckpointState.REJECTED, r.state());
        assertTrue(r.stateReason().contains("step 102"), r.stateReason());
        assertTrue(reg.newestKnownGood("run").isEmpty());
    }

    @Test
    void onUnhealthyStep_afterTheHealthyStepsWereEarnedDuringVerification_stillKnownGood() throws Exception {
        // prevents: a checkpoint followed by its N healthy steps while still being verified rejected by a
        // later unhealthy step ("after 7 of 3 healthy steps"), leaving the run without a rollback target
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 2);
        byte[] big = new byte[64 << 20]; // the verifier's one thread is busy with it while c waits
        reg.register("run", 1, CheckpointFormat.SAFETENSORS,
                file("big.safetensors", new SafetensorsWriter().raw("w", "F32", new long[] {big.length / 4}, big)), 0, false);
        CheckpointRecord c = reg.register("run", 100, CheckpointFormat.SAFETENSORS,
                file("late.safetensors", new SafetensorsWriter().f32("w", 1)), 0, false);
        reg.onHealthyStep("run", 101);
        reg.onHealthyStep("run", 102);
        CheckpointState pending = reg.get(c.id()).state();
        reg.onUnhealthyStep("run", 103);
        assertTrue(pending == CheckpointState.REGISTERED || pending == CheckpointState.VERIFYING, pending.name());
        assertEquals(CheckpointState.KNOWN_GOOD, awaitSettled(reg, c.id()).state(), reg.get(c.id()).stateReason());
    }

    @Test
    void register_samePathAgain_evictsTheEarlierCheckpoint() throws Exception {
        // prevents: a rollback to step 10 loading ckpt.pt as step 40 rewrote it (one fixed filename,
        // nanoGPT's always_save_checkpoint), the newer (maybe diverged) state under the older step
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 1);
        CheckpointRecord a = reg.register("run", 10, CheckpointFormat.SAFETENSORS,
                file("ckpt.safetensors", new SafetensorsWriter().f32("w", 1)), 11, false);
        awaitSettled(reg, a.id());
        reg.onHealthyStep("run", 11);
        assertEquals(CheckpointState.KNOWN_GOOD, reg.get(a.id()).state());
        CheckpointRecord b = reg.register("run", 40, CheckpointFormat.SAFETENSORS,
                file("ckpt.safetensors", new SafetensorsWriter().f32("w", 2)), 41, false);
        CheckpointRecord evicted = reg.get(a.id());
        assertEquals(CheckpointState.EVICTED, evicted.state());
        assertTrue(evicted.stateReason().contains("written again by the checkpoint of step 40"), evicted.stateReason());
        awaitSettled(reg, b.id());
        assertTrue(reg.newestKnownGood("run").isEmpty(), "the rewritten step 10 is no rollback target");
    }

    @Test
    void aCheckpointFileDeletedByRotation_isNoRollbackTarget_whetherDeletedBeforeOrAfterItEarnedKnownGood() throws Exception {
        // prevents: a rollback ordered to a file save_top_k / save_total_limit deleted (the trainer halted
        // although an intact snapshot was known-good), when the deletion came before or after the promotion
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 1);
        CheckpointRecord kept = reg.register("run", 5, CheckpointFormat.SAFETENSORS,
                file("step5.safetensors", new SafetensorsWriter().f32("w", 1)), 6, false);
        awaitSettled(reg, kept.id());
        reg.onHealthyStep("run", 6);
        CheckpointRecord rotated = reg.register("run", 10, CheckpointFormat.SAFETENSORS,
                file("step10.safetensors", new SafetensorsWriter().f32("w", 1)), 11, false);
        awaitSettled(reg, rotated.id());
        reg.onHealthyStep("run", 11);
        assertEquals(rotated.id(), reg.newestKnownGood("run").orElseThrow().id());
        CheckpointRecord early = reg.register("run", 20, CheckpointFormat.SAFETENSORS,
                file("step20.safetensors", new SafetensorsWriter().f32("w", 1)), 21, false);
        assertEquals(CheckpointState.VERIFIED, awaitSettled(reg, early.id()).state());

        Files.delete(root.resolve("step10.safetensors")); // after it earned known-good
        Files.delete(root.resolve("step20.safetensors")); // before
        reg.register("run", 22, CheckpointFormat.MEMORY, slot("memory://p1/rank0/slot0"), 23, true);
        CheckpointRecord gone = reg.get(rotated.id());
        assertEquals(CheckpointState.EVICTED, gone.state());
        assertTrue(gone.stateReason().contains("step10.safetensors is gone from disk"), gone.stateReason());
        assertEquals(CheckpointState.EVICTED, reg.get(early.id()).state(), "checked at every registration");
        assertEquals(kept.id(), reg.newestKnownGood("run").orElseThrow().id(), "the intact older file");

        CheckpointRecord late = reg.register("run", 30, CheckpointFormat.SAFETENSORS,
                file("step30.safetensors", new SafetensorsWriter().f32("w", 1)), 31, false);
        awaitSettled(reg, late.id());
        Files.delete(root.resolve("step30.safetensors"));
        reg.onHealthyStep("run", 31); // earns it, but its file is gone: evicted, not promoted
        assertEquals(CheckpointState.EVICTED, reg.get(late.id()).state());
        reg.onHealthyStep("run", 32);
        assertEquals(CheckpointState.KNOWN_GOOD, reg.get(kept.id()).state());
        assertTrue(reg.newestKnownGood("run").orElseThrow().step() != 30);
    }

    @Test
    void newestPending_isTheNewestCheckpointNotYetKnownGood_andLeavesWithItsPromotion() throws Exception {
        // prevents: a HALT for want of a target telling a trainer to register checkpoints it had registered
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 2);
        assertTrue(reg.newestPending("run").isEmpty());
        CheckpointRecord c = reg.register("run", 10, CheckpointFormat.SAFETENSORS,
                file("p.safetensors", new SafetensorsWriter().f32("w", 1)), 11, false);
        assertEquals(c.id(), reg.newestPending("run").orElseThrow().id());
        awaitSettled(reg, c.id());
        reg.onHealthyStep("run", 11);
        assertEquals(CheckpointState.VERIFIED, reg.newestPending("run").orElseThrow().state());
        reg.onHealthyStep("run", 12);
        assertEquals(CheckpointState.KNOWN_GOOD, reg.get(c.id()).state());
        assertTrue(reg.newestPending("run").isEmpty(), "promoted: no longer pending");
    }

    @Test
    void theSamePathAtTheSameStepRegisteredAgainOnceSettled_isVerifiedAnew_notHandedTheOldRecord() throws Exception {
        // prevents: a loop that jumped back after a rollback re-saving step-24 (healthy now) getting the old
        // REJECTED record back, and a restarted trainer's rewrite of checkpoint-N/ keeping KNOWN_GOOD unverified
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 1);
        List<CheckpointFileSpec> f = file("step24.safetensors", new SafetensorsWriter().f32("w", Float.NaN));
        CheckpointRecord bad = awaitSettled(reg, reg.register("run", 24, CheckpointFormat.SAFETENSORS, f, 25, false).id());
        assertEquals(CheckpointState.REJECTED, bad.state());
        List<CheckpointFileSpec> again = file("step24.safetensors", new SafetensorsWriter().f32("w", 1));
        assertEquals(f, again);
        CheckpointRecord good = reg.register("run", 24, CheckpointFormat.SAFETENSORS, again, 25, true);
        assertTrue(!good.id().equals(bad.id()), "a new record for the new content");
        assertEquals(CheckpointState.VERIFIED, awaitSettled(reg, good.id()).state());
        reg.onHealthyStep("run", 25);
        assertEquals(good.id(), reg.newestKnownGood("run").orElseThrow().id());
    }

    @Test
    void register_nanCheckpoint_rejectedInJournalAcrossRestart() throws Exception {
        // prevents: losing checkpoint states (and the known-good target) when the sidecar restarts
        SQLiteDataSource ds = new SQLiteDataSource();
        ds.setUrl("jdbc:sqlite:" + root.resolve("journal.db"));
        JdbcCheckpointStore store = new JdbcCheckpointStore(SqlConnections.fromDataSource(ds));
        CheckpointRegistry reg = registry(store, 1);
        CheckpointRecord good = reg.register("run", 10, CheckpointFormat.SAFETENSORS,
                file("g.safetensors", new SafetensorsWriter().f32("w", 1, 2)), 77, false);
        CheckpointRecord bad = reg.register("run", 20, CheckpointFormat.SAFETENSORS,
                file("b.safetensors", new SafetensorsWriter().f32("w", Float.NaN)), 0, false);
        awaitSettled(reg, good.id());
        awaitSettled(reg, bad.id());
        reg.onHealthyStep("run", 11);

        CheckpointRegistry restarted = registry(new JdbcCheckpointStore(SqlConnections.fromDataSource(ds)), 1);
        CheckpointRecord g = restarted.newestKnownGood("run").orElseThrow();
        assertEquals(good.id(), g.id());
        assertEquals(77, g.dataPosition());
        assertEquals(2, g.tensors().get(0).elements());
        CheckpointRecord b = restarted.get(bad.id());
        assertEquals(CheckpointState.REJECTED, b.state());
        assertTrue(b.stateReason().contains("NaN"), b.stateReason());
    }

    @Test
    void register_torchPickleFormat_unverifiable() throws Exception {
        // prevents: a pickle checkpoint reaching VERIFIED through the registry path
        CheckpointRegistry reg = registry(new InMemoryCheckpointStore(), 1);
        Path p = Files.write(root.resolve("model.bin"), new byte[] {(byte) 0x80, 0x02});
        CheckpointRecord r = reg.register("run", 5, CheckpointFormat.TORCH_PICKLE,
                List.of(new CheckpointFileSpec(p.toString(), null, 0)), 0, false);
        assertEquals(CheckpointState.UNVERIFIABLE, awaitSettled(reg, r.id()).state());
    }
}
