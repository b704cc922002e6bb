package io.trainguard.checkpoint;

/** Progress of a running verification, for REST and the log. */
public record VerificationProgress(long bytesDone, long bytesTotal, double bytesPerSecond) {
    public double fraction() {
        return bytesTotal <= 0 ? 0 : Math.min(1.0, (double) bytesDone / bytesTotal);
    }
}
