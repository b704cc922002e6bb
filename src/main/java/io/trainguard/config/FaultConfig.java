package io.trainguard.config;

import io.smallrye.config.ConfigMapping;
import io.smallrye.config.WithDefault;

/** Fault replay settings of the sidecar (prefix {@code trainguard.fault}). */
@ConfigMapping(prefix = "trainguard.fault")
public interface FaultConfig {
    /**
     * Transient faults (a replay of a faulty step came out clean) after which a device is suspect:
     * an incident, the trainguard_suspect_device metric and the trainer health group DOWN. 0 = never.
     */
    @WithDefault("3")
    int suspectDeviceTransients();
}
