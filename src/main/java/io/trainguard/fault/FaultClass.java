package io.trainguard.fault;

/** Mirrors trainguard.v1.FaultClass: what replaying a faulty step showed. */
public enum FaultClass {
    /** The replay was clean: a bit flip or a flaky device; the client applied the replay's update. */
    TRANSIENT,
    /** The same fault again: a bad batch, a fragile layer, too high an LR; the step was skipped. */
    DETERMINISTIC,
    /** A different fault on the replay: numerics that change from run to run; the step was skipped. */
    UNSTABLE
}
