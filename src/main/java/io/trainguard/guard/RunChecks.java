package io.trainguard.guard;

import io.trainguard.guard.model.AuditFinding;
import io.trainguard.guard.model.RunSetup;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.run.RankHolder;
import io.trainguard.guard.run.RunDecider;
import java.util.regex.Pattern;

/** Argument and run-state checks shared by the calls on a run; each failure says what to send instead. */
final class RunChecks {
    private static final Pattern RUN_ID = Pattern.compile("[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}");
    private static final int MAX_WORLD_SIZE = 1 << 20;

    private RunChecks() {
    }

    /**
     * A rank opened by a second trainer process while the first still holds it: a warning, not a
     * refusal, since a process restarted after a crash looks the same for a while (the old one was
     * heard from recently) and must not be left unprotected.
     */
    static AuditFinding sharedRank(RunSetup setup, RankHolder holder) {
        if (sameProcess(setup.trainerInstance(), holder.trainerInstance())) {
            // A retry in one process (a framework's fit() again after a crash, a notebook cell run again):
            // the earlier Guard ended without closing the run, which the docs recommend for a restart.
            return new AuditFinding("RANK_REOPENED_IN_PROCESS", Severity.INFO, "rank " + setup.rank() + " of run '"
                    + setup.runId() + "' was held by an earlier Guard of this process ('" + holder.trainerInstance()
                    + "', at step " + holder.lastStep() + ") that did not close the run (it ended by an exception, or "
                    + "detached for a restart): this Guard ('" + setup.trainerInstance() + "') takes the rank over, and "
                    + "the earlier one's in-memory snapshots are no rollback targets any more. If that Guard is still "
                    + "training (two models under one run id), give each its own run id.");
        }
        return new AuditFinding("RANK_HELD_BY_ANOTHER_PROCESS", Severity.WARNING, "rank " + setup.rank() + " of run '"
                + setup.runId() + "' is held by another trainer process ('" + holder.trainerInstance() + "', last heard "
                + holder.quiet().toSeconds() + " s ago, at step " + holder.lastStep() + ") that has not closed the run: this "
                + "process ('" + setup.trainerInstance() + "') and it would merge their steps under one run and evict "
                + "each other's in-memory snapshots. Give each training process its own run id (or launch them as the "
                + "ranks of one job, e.g. with torchrun). If that process has exited (a restart after a crash), ignore this.");
    }

    /**
     * Whether two trainer instances are Guards of one process: the Python client names them
     * {@code host:pid:nonce}, a nonce per Guard. Names of another shape are never the same process.
     */
    static boolean sameProcess(String a, String b) {
        int i = a.lastIndexOf(':');
        int j = b.lastIndexOf(':');
        return i > 0 && a.indexOf(':') < i && i == j && a.regionMatches(0, b, 0, i);
    }

    /** A new rank's OpenRun: the run id, world size and rank must be usable. */
    static void opening(RunSetup setup) {
        if (setup.runId() == null || !RUN_ID.matcher(setup.runId()).matches()) {
            throw new InvalidRequestException("run_id '" + setup.runId() + "' is invalid: use 1-128 characters of "
                    + "letters, digits and . _ : / -, starting with a letter or digit");
        }
        if (setup.worldSize() < 1 || setup.worldSize() > MAX_WORLD_SIZE) {
            throw new InvalidRequestException("world_size must be between 1 and " + MAX_WORLD_SIZE + ", got " + setup.worldSize());
        }
        if (setup.rank() < 0 || setup.rank() >= setup.worldSize()) {
            throw new InvalidRequestException("rank " + setup.rank() + " is outside world size " + setup.worldSize()
                    + ": ranks are 0.." + (setup.worldSize() - 1));
        }
    }

    /** Re-opening an existing run: it must still be open and keep its world size. */
    static void reopening(RunDecider run, RunSetup setup) {
        if (run.state() == RunState.CLOSED) {
            throw new PreconditionFailedException("run '" + setup.runId() + "' is closed: open a new run id to train again");
        }
        if (run.worldSize() != setup.worldSize()) {
            throw new PreconditionFailedException("run '" + setup.runId() + "' has world size " + run.worldSize()
                    + " but this rank reports " + setup.worldSize() + ": use a new run id when the world size changes");
        }
    }

    static void notClosed(RunDecider run, String call) {
        if (run.state() == RunState.CLOSED) {
            throw new PreconditionFailedException(call + " on run '" + run.runId() + "' refused: the run is closed; "
                    + "open a new run id to train again");
        }
    }

    static void rank(RunDecider run, int rank) {
        if (rank < 0 || rank >= run.worldSize()) {
            throw new InvalidRequestException("rank " + rank + " is outside world size " + run.worldSize() + " of run '"
                    + run.runId() + "': ranks are 0.." + (run.worldSize() - 1));
        }
    }
}
