package io.trainguard.guard.run;

import java.util.Optional;

/**
 * What a rank's (re)join found: {@code resumed}, a rank seen before (or a run past its first step);
 * {@code otherHolder}, another trainer process still holding that rank (RankTracks.otherHolder).
 */
public record Joined(boolean resumed, Optional<RankHolder> otherHolder) {
}
