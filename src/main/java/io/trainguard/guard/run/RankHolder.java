package io.trainguard.guard.run;

import java.time.Duration;

/** The trainer process that holds a rank of a run, how long ago it was last heard from, its last step. */
public record RankHolder(String trainerInstance, Duration quiet, long lastStep) {
}
