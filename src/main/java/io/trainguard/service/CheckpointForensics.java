package io.trainguard.service;

import io.trainguard.checkpoint.CheckpointFormat;
import io.trainguard.checkpoint.CheckpointNotFoundException;
import io.trainguard.checkpoint.CheckpointRecord;
import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.checkpoint.CheckpointState;
import io.trainguard.checkpoint.CheckpointTensors;
import io.trainguard.checkpoint.PathPolicy;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.PreconditionFailedException;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.Severity;
import io.trainguard.tensor.format.TensorFileException;
import io.trainguard.tensor.inspect.CheckpointTensorSummary;
import io.trainguard.tensor.inspect.DjlForensics;
import io.trainguard.tensor.scan.TensorStats;
import java.io.IOException;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.EnumSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.locks.ReentrantLock;

/**
 * InspectCheckpoint: after a checkpoint was REJECTED (or to compare with a good one), where its
 * non-finite values are and what every tensor's finite part looks like, read from its files
 * through DJL ({@link DjlForensics}) and journaled as a TENSOR_FORENSICS incident. One at a time:
 * a second request while one runs is refused rather than queued behind minutes of work.
 */
public final class CheckpointForensics {
    private static final Set<CheckpointState> READABLE = EnumSet.of(CheckpointState.REJECTED, CheckpointState.VERIFIED,
            CheckpointState.KNOWN_GOOD);

    private final GuardedRuns guard;
    private final CheckpointRegistry registry;
    private final PathPolicy paths;
    private final DjlForensics djl;
    private final long maxBytes;
    /** One forensics request at a time: a second one is refused, not queued. */
    private final ReentrantLock oneAtATime = new ReentrantLock();

    /** The incident it was journaled as, offenders first, and what it cost. */
    public record Result(long incidentId, String checkpointId, List<CheckpointTensorSummary> tensors, long bytes,
            long nanos) {
        /** What both the RPC and the REST view report. */
        public long elapsedMs() {
            return nanos / 1_000_000;
        }
    }

    /** @param maxBytes tensor bytes one request may inspect (trainguard.tensor.forensics-max-bytes) */
    public CheckpointForensics(GuardedRuns guard, CheckpointRegistry registry, PathPolicy paths, DjlForensics djl,
            long maxBytes) {
        this.guard = guard;
        this.registry = registry;
        this.paths = paths;
        this.djl = djl;
        this.maxBytes = maxBytes;
    }

    /**
     * @param names the tensors to inspect (exact names, or a prefix ending in '*'); empty for all
     */
    public Result inspect(String runId, String checkpointId, List<String> names) {
        guard.run(runId); // NOT_FOUND for an unknown run
        CheckpointRecord c = registry.get(checkpointId);
        if (!c.runId().equals(runId)) {
            throw new CheckpointNotFoundException("run '" + runId + "' has no checkpoint " + checkpointId
                    + "; list the run's checkpoints");
        }
        if (c.format() == CheckpointFormat.MEMORY) {
            throw new PreconditionFailedException("checkpoint " + checkpointId + " is an in-memory snapshot held by "
                    + "the trainer; forensics reads checkpoint files");
        }
        if (!READABLE.contains(c.state())) {
            throw new PreconditionFailedException("checkpoint " + checkpointId + " is " + c.state()
                    + (c.state().isTerminal() ? " (" + c.stateReason() + ")" : "; ask again once it is REJECTED or VERIFIED")
                    + ": forensics reads checkpoints whose files were verified or rejected");
        }
        if (!oneAtATime.tryLock()) {
            throw new PreconditionFailedException("another checkpoint's forensics is running; ask again when it ends");
        }
        long t0 = System.nanoTime();
        try (CheckpointTensors files = CheckpointTensors.open(c.files(), paths)) {
            List<CheckpointTensors.FileTensor> chosen = choose(files.tensors(), names, c);
            List<CheckpointTensorSummary> out = new ArrayList<>(chosen.size());
            long bytes = 0;
            for (CheckpointTensors.FileTensor t : chosen) {
                out.add(djl.inspect(t.file(), t.tensor()));
                bytes += t.tensor().byteLength();
            }
            out.sort(Comparator.comparingLong(CheckpointTensorSummary::nonFiniteCount).reversed()); // stable: file order kept
            var incident = guard.recordIncident(runId, 0, c.step(), IncidentKind.TENSOR_FORENSICS, Severity.INFO,
                    ForensicsText.describeCheckpoint(c, out));
            return new Result(incident.id(), checkpointId, List.copyOf(out), bytes, System.nanoTime() - t0);
        } catch (TensorFileException e) {
            throw new PreconditionFailedException("checkpoint " + checkpointId + " cannot be read for forensics: "
                    + e.reason());
        } catch (IOException e) {
            throw new PreconditionFailedException("checkpoint " + checkpointId + " cannot be read for forensics ("
                    + e + "); were its files moved or deleted?");
        } finally {
            oneAtATime.unlock();
        }
    }

    private List<CheckpointTensors.FileTensor> choose(List<CheckpointTensors.FileTensor> all, List<String> names,
            CheckpointRecord c) {
        List<CheckpointTensors.FileTensor> chosen = names.isEmpty() ? all
                : all.stream().filter(t -> names.stream().anyMatch(n -> matches(n, t.tensor().name()))).toList();
        if (chosen.isEmpty()) {
            throw new InvalidRequestException("no tensor of checkpoint " + c.id() + " matches " + names + "; it has "
                    + all.stream().limit(10).map(t -> t.tensor().name()).toList()
                    + (all.size() > 10 ? " and " + (all.size() - 10) + " more" : ""));
        }
        long bytes = chosen.stream().mapToLong(t -> t.tensor().byteLength()).sum();
        if (bytes > maxBytes) {
            List<String> bad = c.tensors() == null ? List.of() : c.tensors().stream().filter(s -> !s.finite())
                    .map(TensorStats::name).limit(10).toList();
            throw new InvalidRequestException(chosen.size() + " tensors of " + bytes + " bytes chosen, over the "
                    + maxBytes + " one forensics request may read (trainguard.tensor.forensics-max-bytes); name the "
                    + "tensors to inspect" + (bad.isEmpty() ? "" : " (the verification found non-finite values in "
                    + bad + ")"));
        }
        return chosen;
    }

    private static boolean matches(String pattern, String name) {
        return pattern.endsWith("*") ? name.startsWith(pattern.substring(0, pattern.length() - 1)) : name.equals(pattern);
    }
}
