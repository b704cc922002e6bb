package io.trainguard.tensor;

/**
 * Running statistics of one contiguous piece of a tensor. Pieces of the same tensor scanned on
 * different threads are merged in offset order with {@link #merge}.
 */
final class ScanAccumulator {
    long elements;
    long nanCount;
    long infCount;
    /** Element index (within the piece, then the tensor after merge) of the first NaN/Inf, or -1. */
    long firstNonFinite = -1;
    /** max |x| over the finite elements. */
    double maxAbs;
    /** sum of x^2 over the finite elements. */
    double sumSquares;
    /** CRC32C of the piece's bytes, and their count, for combining. */
    int crc;
    long crcLength;
    boolean crcValid;
    /** max|x| and the norm were not computed (finite check only). */
    boolean statsSkipped;

    long nonFinite() {
        return nanCount + infCount;
    }

    /** Appends {@code next}, which follows this piece directly in the tensor. */
    void merge(ScanAccumulator next) {
        if (firstNonFinite < 0 && next.firstNonFinite >= 0) {
            firstNonFinite = elements + next.firstNonFinite;
        }
        statsSkipped |= next.statsSkipped;
        elements += next.elements;
        nanCount += next.nanCount;
        infCount += next.infCount;
        maxAbs = Math.max(maxAbs, next.maxAbs);
        sumSquares += next.sumSquares;
        if (crcValid && next.crcValid) {
            crc = Crc32c.combine(crc, next.crc, next.crcLength);
            crcLength += next.crcLength;
        } else if (!crcValid && crcLength == 0 && next.crcValid) {
            crc = next.crc;
            crcLength = next.crcLength;
            crcValid = true;
        }
    }
}
