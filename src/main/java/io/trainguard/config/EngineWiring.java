package io.trainguard.config;

import io.quarkus.runtime.Startup;
import io.trainguard.guard.CheckpointCatalog;
import io.trainguard.guard.GuardEvents;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.HangSweep;
import io.trainguard.guard.RunReads;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.policy.Policy;
import io.trainguard.guard.policy.PolicyField;
import io.trainguard.store.SqliteJournal;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.inject.Disposes;
import jakarta.enterprise.inject.Produces;
import jakarta.inject.Singleton;
import java.time.Clock;
import org.jboss.logging.Logger;

/** Builds the plain-Java engine from configuration; the only place that knows how the pieces fit. */
@ApplicationScoped
public class EngineWiring {
    private static final Logger LOG = Logger.getLogger(EngineWiring.class);

    @Produces
    @Singleton
    SqliteJournal journal(TrainguardConfig config) {
        var j = config.journal();
        SqliteJournal journal = new SqliteJournal(j.path(), j.synchronous(), j.queueCapacity());
        try {
            journal.expireClosedRuns(java.time.Instant.now().minus(j.closedRunRetention()));
        } catch (IllegalStateException e) {
            LOG.warn(e.getMessage()); // a full disk must not stop the start: retention runs next time
        }
        return journal;
    }

    void closeJournal(@Disposes SqliteJournal journal) {
        journal.close();
    }

    @Produces
    @Singleton
    @Startup
    GuardedRuns guardService(TrainguardConfig config, SqliteJournal journal, CheckpointCatalog checkpoints, GuardEvents events) {
        GuardedRuns service = new GuardedRuns(journal, checkpoints, events, defaults(config.policy()), Clock.systemUTC(),
                System::nanoTime, config.journal().durableTimeout());
        int restored = service.restore(config.journal().replaySteps());
        LOG.infof("journal %s: %d run(s) restored", config.journal().path().toAbsolutePath(), restored);
        return service;
    }

    @Produces
    @Singleton
    RunReads runReads(GuardedRuns runs) {
        return new RunReads(runs);
    }

    @Produces
    @Singleton
    HangSweep hangSweep(GuardedRuns runs) {
        return new HangSweep(runs, System::nanoTime);
    }

    /**
     * The configured defaults, validated like any policy change. One line per {@link PolicyField}
     * (PolicySchemaTest checks that none is missing or crossed).
     */
    static Policy defaults(TrainguardConfig.Policy p) {
        Policy.Builder b = PolicyField.defaults().toBuilder();
        b.clipMode = p.clipMode();
        b.clipThreshold = p.clipThreshold();
        b.maxConsecutiveSkips = p.maxConsecutiveSkips();
        b.validationWarmupSteps = p.validationWarmupSteps();
        b.validationIntervalSteps = p.validationIntervalSteps();
        b.spikeZThreshold = p.spikeZThreshold();
        b.spikeEmaAlpha = p.spikeEmaAlpha();
        b.spikeWarmupSteps = p.spikeWarmupSteps();
        b.spikeAction = p.spikeAction();
        b.zclipZThreshold = p.zclipZThreshold();
        b.zclipAlpha = p.zclipAlpha();
        b.autoclipPercentile = p.autoclipPercentile();
        b.knownGoodHealthySteps = p.knownGoodHealthySteps();
        b.rollbackSkipBatches = p.rollbackSkipBatches();
        b.rollbackLrFactor = p.rollbackLrFactor();
        b.rollbackRewarmSteps = p.rollbackRewarmSteps();
        b.maxRollbacks = p.maxRollbacks();
        b.rollbackWindowSteps = p.rollbackWindowSteps();
        b.preflightMode = p.preflightMode();
        b.hangFactor = p.hangFactor();
        b.hangMin = p.hangMin();
        b.hangMax = p.hangMax();
        b.crossRankRtol = p.crossRankRtol();
        b.divergenceWindow = p.divergenceWindow();
        b.divergenceRatio = p.divergenceRatio();
        b.recoverySteps = p.recoverySteps();
        try {
            return b.build();
        } catch (InvalidRequestException e) {
            throw new IllegalArgumentException("invalid trainguard.policy configuration: " + e.getMessage()
                    + " (the config key is trainguard.policy.<name with - for _>)", e);
        }
    }
}
