package io.trainguard.config;

import io.smallrye.config.ConfigMapping;
import io.smallrye.config.WithDefault;
import io.trainguard.guard.Action;
import io.trainguard.guard.AuditMode;
import io.trainguard.guard.ClipMode;
import java.nio.file.Path;
import java.time.Duration;

/**
 * All of trainguard's settings (prefix {@code trainguard}); every key has a default so the sidecar
 * runs with nothing configured. Environment variables work too: TRAINGUARD_JOURNAL_PATH etc.
 */
@ConfigMapping(prefix = "trainguard")
public interface TrainguardConfig {

    Listen listen();

    Journal journal();

    Policy policy();

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
