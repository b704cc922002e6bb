package io.trainguard.config;

import io.smallrye.config.ConfigMapping;
import io.smallrye.config.WithDefault;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.model.ClipMode;
import io.trainguard.tensor.format.ReadMode;
import io.trainguard.tensor.scan.Checksum;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Optional;

/**
 * All of trainguard's settings (prefix {@code trainguard}); every key has a default so the sidecar
 * runs with nothing configured. Environment variables work too: TRAINGUARD_JOURNAL_PATH etc.
 */
@ConfigMapping(prefix = "trainguard")
public interface TrainguardConfig {

    Listen listen();

    Journal journal();

    Policy policy();

    Checkpoint checkpoint();

    Tensor tensor();

    Limits limits();

    interface Checkpoint {
        /** The only directories checkpoints are read from (never written); missing ones are skipped with a warning. */
        @WithDefault("checkpoints")
        List<Path> roots();

        /** Verifications waiting beyond this are refused with RESOURCE_EXHAUSTED. */
        @WithDefault("16")
        int verifyQueueCapacity();

        /**
         * Content checksum per tensor and per file: tg1 (in the statistics' vector loop, about a
         * third of CRC32C's CPU), crc32c (recomputable with any crc32c tool) or none.
         */
        @WithDefault("tg1")
        Checksum checksum();

        /** Per-tensor max |x| and L2 norm; false = finite check only (fastest). */
        @WithDefault("true")
        boolean tensorStats();

        @WithDefault("5s")
        Duration progressLogInterval();
    }

    interface Tensor {
        @WithDefault("2")
        int scanThreads();

        /**
         * Work unit handed to one scan thread (mapped at once, or read 128 KiB at a time); a multiple
         * of 32 KiB (the checksum block).
         */
        @WithDefault("67108864")
        int scanChunkBytes();

        /**
         * map: scan each unit in place in the page cache (no copy; the fastest on local file
         * systems); pread: copy it through a small buffer (for file systems where mapping is slow).
         */
        @WithDefault("map")
        ReadMode readMode();

        /**
         * Vector API scan kernels (about 3x faster verification); take effect only when the JVM runs
         * with --add-modules jdk.incubator.vector and the C2 JIT, otherwise the scalar kernels run.
         */
        @WithDefault("true")
        boolean simd();

        /** Where DJL extracts its JNI library; outside target/ so `mvn clean` keeps it. */
        Optional<Path> djlCacheDir();

        /** Formats only DJL reads (npy, npz, TorchScript) are loaded whole: cap their size. */
        @WithDefault("536870912")
        long djlMaxFileBytes();

        /** Tensor bytes one InspectTensors call may carry; below trainguard.limits.max-message-bytes. */
        @WithDefault("4000000")
        long inspectMaxBytes();

        @WithDefault("256")
        int inspectMaxTensors();

        /**
         * Tensor bytes one checkpoint-forensics request (InspectCheckpoint) may read through DJL;
         * memory does not grow with it (chunks), time does (about 1 s per GB per core).
         */
        @WithDefault("8589934592")
        long forensicsMaxBytes();

        /** Elements checkpoint forensics hands libtorch at a time; native memory ~20 bytes each. */
        @WithDefault("2097152")
        int forensicsChunkElements();
    }

    interface Limits {
        /**
         * Larger gRPC messages are refused with RESOURCE_EXHAUSTED before they are parsed. A step
         * report is a few KiB; 4 MiB leaves room for InspectTensors forensics and keeps one hostile
         * message from costing seconds of event-loop CPU and hundreds of MB of heap.
         */
        @WithDefault("4194304")
        int maxMessageBytes();
    }

    interface Listen {
        /** TCP address; localhost so only the pod (or this machine) can reach it. */
        @WithDefault("127.0.0.1")
        String host();

        @WithDefault("7474")
        int port();

        /** Unix domain socket, the pod-local default transport in Kubernetes. */
        @WithDefault("/tmp/trainguard.sock")
        String socket();

        @WithDefault("true")
        boolean socketEnabled();

        /**
         * gRPC server reflection (grpcurl, Postman) on the sidecar's port: off by default, since it
         * lists every rpc to anyone who can connect. Read by quarkus.grpc.server.enable-reflection-service.
         */
        @WithDefault("false")
        boolean grpcReflection();
    }

    interface Journal {
        /** SQLite file; put it on its own volume so a sidecar restart loses nothing. */
        @WithDefault("trainguard-data/journal.db")
        Path path();

        /** SQLite synchronous mode: NORMAL survives a killed sidecar, FULL also a power loss. */
        @WithDefault("NORMAL")
        String synchronous();

        /** Queued writes before reporters wait (back-pressure). */
        @WithDefault("65536")
        int queueCapacity();

        /** How long a course-changing verdict may wait for its journal write before the call fails. */
        @WithDefault("5s")
        Duration durableTimeout();

        /**
         * Closed runs (with their steps and incidents) are removed from the journal at start once
         * they have been closed this long, so the journal and the start time stay bounded.
         */
        @WithDefault("30d")
        Duration closedRunRetention();

        /** Steps per rank replayed from the journal at start to rebuild the statistics. */
        @WithDefault("512")
        int replaySteps();
    }

    /** The default policy of every run; OpenRun and UpdatePolicy override it per run. */
    interface Policy {
        // OFF: a healthy run is never changed unless clipping is configured (spikes are handled by the
        // spike detectors); FIXED 1.0 clipped 46 of 100 healthy steps of examples/minimal_loop.py.
        @WithDefault("OFF")
        ClipMode clipMode();

        @WithDefault("1.0")
        double clipThreshold();

        @WithDefault("3")
        int maxConsecutiveSkips();

        @WithDefault("100")
        long validationWarmupSteps();

        @WithDefault("500")
        long validationIntervalSteps();

        @WithDefault("6.0")
        double spikeZThreshold();

        @WithDefault("0.98")
        double spikeEmaAlpha();

        @WithDefault("64")
        int spikeWarmupSteps();

        @WithDefault("SKIP")
        Action spikeAction();

        @WithDefault("2.5")
        double zclipZThreshold();

        @WithDefault("0.97")
        double zclipAlpha();

        @WithDefault("10")
        double autoclipPercentile();

        @WithDefault("50")
        int knownGoodHealthySteps();

        @WithDefault("0")
        long rollbackSkipBatches();

        @WithDefault("0.5")
        double rollbackLrFactor();

        @WithDefault("100")
        long rollbackRewarmSteps();

        @WithDefault("3")
        int maxRollbacks();

        @WithDefault("1000")
        long rollbackWindowSteps();

        @WithDefault("REFUSE")
        AuditMode preflightMode();

        @WithDefault("5.0")
        double hangFactor();

        /**
         * The least a phase is allowed before it counts as hung, however short it learned to be:
         * long enough for an evaluation, a torch.save or a data-loader restart the guard was not
         * told about (a guard must never be what kills a healthy run).
         */
        @WithDefault("10m")
        Duration hangMin();

        @WithDefault("30m")
        Duration hangMax();

        @WithDefault("1e-6")
        double crossRankRtol();

        @WithDefault("10")
        int divergenceWindow();

        @WithDefault("2.0")
        double divergenceRatio();

        @WithDefault("20")
        int recoverySteps();
    }
}
