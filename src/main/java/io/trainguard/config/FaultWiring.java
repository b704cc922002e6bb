package io.trainguard.config;

import io.trainguard.fault.FaultLedger;
import io.trainguard.metrics.FaultMetrics;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.inject.Produces;
import jakarta.inject.Singleton;

/** Builds the plain-Java fault ledger from configuration and connects it to the metrics. */
@ApplicationScoped
public class FaultWiring {

    @Produces
    @Singleton
    FaultLedger faultLedger(FaultConfig config, FaultMetrics metrics) {
        return new FaultLedger(config.suspectDeviceTransients(), metrics::suspectChanged);
    }
}
