package io.trainguard.guard.model;

/**
 * What the client may decide on its own for the next steps: a finite step whose grad norm and loss
 * stay under these bounds is applied (clipped to {@code clipThreshold} when that is > 0) without
 * waiting for the sidecar. Anything else waits for a verdict.
 */
public record LocalBounds(double maxGradNorm, double maxLoss, double clipThreshold, long validUntilStep) {
}
