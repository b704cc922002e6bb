package io.trainguard.store;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.trainguard.guard.model.Action;
import io.trainguard.guard.JournalWrite;
import io.trainguard.guard.model.StepRecord;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The journal on a real, small tmpfs that fills up and frees again (needs root for mount; CI is root). */
class SqliteJournalRecoveryTest {
    @TempDir
    Path dir;
    private Path mount;

    private Path mountTmpfs(String size) throws Exception {
        Assumptions.assumeTrue("root".equals(System.getProperty("user.name")),
                "SKIPPED: the disk-full tests mount a tmpfs and need root (CI runs as root)");
        mount = dir.resolve("vol");
        Files.createDirectories(mount);
        run("mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", mount.toString());
        return mount;
    }

    @AfterEach
    void unmount() throws Exception {
        if (mount != null) {
            run("umount", "-l", mount.toString());
        }
    }

    private static void run(String... cmd) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        if (!p.waitFor(20, TimeUnit.SECONDS) || p.exitValue() != 0) {
            throw new IllegalStateException(String.join(" ", cmd) + " failed: " + out);
        }
    }

    private static JournalWrite steps(long from, int n) {
        List<StepRecord> s = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            s.add(new StepRecord("run-full", 0, from + i, 1.0, 0.5, 1e-3, 0, Action.SKIP, 0, Instant.now()));
        }
        return new JournalWrite(null, s, List.of());
    }

    private static boolean commits(SqliteJournal j, JournalWrite w) throws InterruptedException {
        try {
            j.write(w).get(10, TimeUnit.SECONDS);
            return true;
        } catch (ExecutionException | java.util.concurrent.TimeoutException e) {
            return false;
        }
    }

    /** Fills the volume with a filler file until ENOSPC. */
    private static Path fill(Path vol) throws IOException {
        Path filler = vol.resolve("filler");
        byte[] block = new byte[64 << 10];
        try (OutputStream out = Files.newOutputStream(filler)) {
            while (true) {
                out.write(block);
            }
        } catch (IOException full) {
            return filler;
        }
    }

    private static boolean waitHealthy(SqliteJournal j, boolean want) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
        while (System.nanoTime() < deadline) {
            if (j.healthy() == want) {
                return true;
            }
            Thread.sleep(50);
        }
        return false;
    }

    // Prevents: after a full disk every later commit failed with "cannot commit - no transaction is
    // active" until the process restarted (readiness DOWN, every SKIP/ROLLBACK/HALT UNAVAILABLE).
    @Test
    void write_afterDiskFullAndSpaceFreed_commitsAgainWithoutRestart() throws Exception {
        Path vol = mountTmpfs("2m");
        try (SqliteJournal j = new SqliteJournal(vol.resolve("journal.db"), "NORMAL", 1024)) {
            assertTrue(commits(j, steps(0, 10)));
            Path filler = fill(vol);
            long step = 10;
            boolean failed = false;
            for (int i = 0; i < 200 && !failed; i++, step += 500) {
                failed = !commits(j, steps(step, 500));
            }
            assertTrue(failed, "the journal never failed on a full disk");
            assertFalse(j.healthy());
            assertNotNull(j.lastFailure());
            assertTrue(j.writerAlive(), "a full disk must not end the writer (liveness)");
            Files.delete(filler);
            // the idle writer's probe notices by itself that there is room again
            assertTrue(waitHealthy(j, true), "journal still unhealthy after space returned: " + j.lastFailure());
            for (int i = 0; i < 5; i++) {
                assertTrue(commits(j, steps(1_000_000 + i * 10, 10)), "commit " + i + " after recovery failed: " + j.lastFailure());
            }
            assertDoesNotThrow(() -> j.recentSteps("run-full", 0, 5));
        }
    }
}
