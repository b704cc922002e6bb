package io.trainguard.config;

import io.smallrye.config.ConfigMapping;
import io.smallrye.config.WithDefault;
import io.trainguard.guard.Action;
import io.trainguard.guard.AuditMode;
import io.trainguard.guard.ClipMode;
import io.trainguard.tensor.Checksum;
import io.trainguard.tensor.ReadMode;
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

        @WithDefault("16777216")
        long inspectMaxBytes();

        @WithDefault("256")
        int inspectMaxTensors();
    }

    interface Limits {
        /** Larger gRPC messages are refused with RESOURCE_EXHAUSTED before they are parsed. */
        @WithDefault("16777216")
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

        /** Steps per rank replayed from the journal at start to rebuild the statistics. */
        @WithDefault("512")
        int replaySteps();
    }

    /** The default policy of every run; OpenRun and UpdatePolicy override it per run. */
    interface Policy {
        @WithDefault("FIXED")
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

        @WithDefault("30s")
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
