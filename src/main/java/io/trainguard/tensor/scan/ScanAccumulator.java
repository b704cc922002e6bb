package io.trainguard.tensor.scan;

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
    /** CRC32C of the piece's bytes (checksum CRC32C). */
    int crc;
    /** tg1 running value over the piece's blocks, and their number (checksum TG1). */
    long hash;
    long hashBlocks;
    /** Bytes the checksum covers, and which checksum it is: null when none was computed. */
    long checksumLength;
    Checksum checksum;
    private int[] hashLanes;
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
        if (checksum != next.checksum) {
            checksum = null; // a piece without (or with another) checksum: the whole has none
        } else if (checksum == Checksum.CRC32C) {
            crc = Crc32c.combine(crc, next.crc, next.checksumLength);
            checksumLength += next.checksumLength;
        } else if (checksum == Checksum.TG1) {
            hash = ContentHash.combine(hash, next.hash, next.hashBlocks);
            hashBlocks += next.hashBlocks;
            checksumLength += next.checksumLength;
        }
    }

    /** An empty piece whose checksum is {@code c} (of zero bytes), to merge pieces into. */
    static ScanAccumulator withChecksum(Checksum c) {
        ScanAccumulator a = new ScanAccumulator();
        a.checksum = c == Checksum.NONE ? null : c;
        return a;
    }

    void setCrc(int value, long length) {
        crc = value;
        checksumLength = length;
        checksum = Checksum.CRC32C;
    }

    void appendHashBlock(long blockValue, int length) {
        hash = ContentHash.append(hash, blockValue);
        hashBlocks++;
        checksumLength += length;
        checksum = Checksum.TG1;
    }

    /** Scratch state of the content hash's 32 lanes, reused block after block. */
    int[] hashLanes() {
        if (hashLanes == null) {
            hashLanes = new int[ContentHash.LANES];
        }
        return hashLanes;
    }

    /** The checksum as "tg1:<16 hex>" or "crc32c:<8 hex>", null when none was computed. */
    String checksumValue() {
        if (checksum == null) {
            return null;
        }
        return checksum.label() + ":" + (checksum == Checksum.CRC32C ? Crc32c.hex(crc)
                : ContentHash.hex(ContentHash.finish(hash, checksumLength)));
    }

    /** The tg1 checksum of the bytes seen (checksum TG1 only). */
    long tg1() {
        return ContentHash.finish(hash, checksumLength);
    }
}
