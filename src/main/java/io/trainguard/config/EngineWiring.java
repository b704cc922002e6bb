package io.trainguard.config;

import io.quarkus.runtime.Startup;
import io.trainguard.guard.CheckpointCatalog;
import io.trainguard.guard.GuardEvents;
import io.trainguard.guard.GuardService;
import io.trainguard.guard.policy.Policy;
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
    GuardService guardService(TrainguardConfig config, SqliteJournal journal, CheckpointCatalog checkpoints, GuardEvents events) {
        GuardService service = new GuardService(journal, checkpoints, events, defaults(config.policy()), Clock.systemUTC(),
                System::nanoTime, config.journal().durableTimeout());
        int restored = service.restore(config.journal().replaySteps());
        LOG.infof("journal %s: %d run(s) restored", config.journal().path().toAbsolutePath(), restored);
        return service;
    }

    static Policy defaults(TrainguardConfig.Policy p) {
        return new Policy(p.clipMode(), p.clipThreshold(), p.maxConsecutiveSkips(), p.validationWarmupSteps(),
                p.validationIntervalSteps(), p.spikeZThreshold(), p.spikeEmaAlpha(), p.spikeWarmupSteps(), p.spikeAction(),
                p.zclipZThreshold(), p.zclipAlpha(), p.autoclipPercentile(), p.knownGoodHealthySteps(), p.rollbackSkipBatches(),
                p.rollbackLrFactor(), p.rollbackRewarmSteps(), p.maxRollbacks(), p.rollbackWindowSteps(), p.preflightMode(),
                p.hangFactor(), p.hangMin(), p.hangMax(), p.crossRankRtol(), p.divergenceWindow(), p.divergenceRatio(),
                p.recoverySteps());
    }
}
