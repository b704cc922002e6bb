package io.trainguard.tensor.scan;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * tg1, the content checksum the scan computes by default: 64 bits per tensor and per file, made
 * for detecting accidental change (a file rewritten, truncated, bit-rotted, a different
 * checkpoint at the same path), not tampering (give a sha256 for that). It exists because CRC32C
 * cost as much CPU as the whole statistics scan; tg1 runs in the same vector loop as the
 * statistics, on words already in registers, for about a third of CRC32C's cost.
 *
 * <p>Definition (also {@code clients/python/trainguard/checksum.py}, which recomputes it):
 * <ol>
 * <li>A byte string is cut into blocks of {@value #BLOCK} bytes; the last block may be shorter.
 * <li>A block is read as little-endian uint32 words, zero-padded to whole rows of 32 words. Word
 * {@code i} of the block goes to lane {@code i % 32}; lane {@code j} starts at
 * {@code j * 0x85EBCA77 + 0x165667B1} and takes each word as
 * {@code h = (h ^ (h >>> 15) ^ w) * 0x9E3779B1} (mod 2^32).
 * <li>Block value: {@code r = len * P64}; for each lane {@code r = (r ^ h) * P64; r ^= r >>> 29}.
 * <li>String: {@code t = t * R + block} over the blocks in order (mod 2^64, from 0), then
 * {@code fmix64(t ^ length * C)}.
 * <li>A safetensors file: its segments — the header (the 8-byte length and the JSON), then each
 * tensor in data-offset order — each cut into blocks as in 1 (so a segment's last block may be
 * short), all these blocks combined as in 4 over the file's length. This is how pieces combine
 * anyway ({@link #combine}), so the file's value is its segments' values merged.
 * </ol>
 * Every step of a lane is a bijection of its state, so a change confined to one word per lane per
 * block is always detected; other changes escape with probability about 2^-32 (as for CRC32C).
 * Blocks are independent and combine by {@link #combine}, which lets threads hash pieces.
 */
public final class ContentHash {
    /** Bytes per block; pieces hashed on different threads must start on a block boundary. */
    public static final int BLOCK = 32 * 1024;
    static final int LANES = 32;
    static final int P32 = 0x9E3779B1;
    private static final int LANE_STEP = 0x85EBCA77;
    private static final int LANE_SEED = 0x165667B1;
    private static final long P64 = 0x9E3779B97F4A7C15L;
    private static final long R = 0xFF51AFD7ED558CCDL;
    private static final long C = 0xC2B2AE3D27D4EB4FL;

    private ContentHash() {
    }

    /** Fresh lane states for a block. */
    static void seed(int[] lanes) {
        for (int j = 0; j < LANES; j++) {
            lanes[j] = j * LANE_STEP + LANE_SEED;
        }
    }

    /**
     * Feeds {@code n} bytes at {@code p} of the little-endian {@code b} into {@code lanes}, the
     * first word at lane 0, zero-padded to a whole row (the last partial word too): a whole block,
     * or what follows the rows a vector kernel took. The words are copied into an int array first
     * and hashed eight lanes at a time (a word-at-a-time loop over the ByteBuffer ran at a fifth
     * of the speed).
     */
    static void feed(ByteBuffer b, int p, int n, int[] lanes) {
        if (n == 0) {
            return;
        }
        int[] w = WORDS.get();
        int whole = n >>> 2;
        b.duplicate().order(ByteOrder.LITTLE_ENDIAN).limit(p + 4 * whole).position(p).asIntBuffer().get(w, 0, whole);
        int words = whole;
        if ((n & 3) != 0) {
            int last = 0;
            for (int k = 0; k < (n & 3); k++) {
                last |= (b.get(p + 4 * whole + k) & 0xFF) << (8 * k);
            }
            w[words++] = last;
        }
        int rows = (words + LANES - 1) / LANES;
        java.util.Arrays.fill(w, words, rows * LANES, 0);
        // eight lanes at a time down all rows: eight independent chains kept in registers
        for (int g = 0; g < LANES; g += 8) {
            int h0 = lanes[g], h1 = lanes[g + 1], h2 = lanes[g + 2], h3 = lanes[g + 3];
            int h4 = lanes[g + 4], h5 = lanes[g + 5], h6 = lanes[g + 6], h7 = lanes[g + 7];
            for (int o = g, end = rows * LANES; o < end; o += LANES) {
                h0 = (h0 ^ (h0 >>> 15) ^ w[o]) * P32;
                h1 = (h1 ^ (h1 >>> 15) ^ w[o + 1]) * P32;
                h2 = (h2 ^ (h2 >>> 15) ^ w[o + 2]) * P32;
                h3 = (h3 ^ (h3 >>> 15) ^ w[o + 3]) * P32;
                h4 = (h4 ^ (h4 >>> 15) ^ w[o + 4]) * P32;
                h5 = (h5 ^ (h5 >>> 15) ^ w[o + 5]) * P32;
                h6 = (h6 ^ (h6 >>> 15) ^ w[o + 6]) * P32;
                h7 = (h7 ^ (h7 >>> 15) ^ w[o + 7]) * P32;
            }
            lanes[g] = h0; lanes[g + 1] = h1; lanes[g + 2] = h2; lanes[g + 3] = h3;
            lanes[g + 4] = h4; lanes[g + 5] = h5; lanes[g + 6] = h6; lanes[g + 7] = h7;
        }
    }

    private static final ThreadLocal<int[]> WORDS = ThreadLocal.withInitial(() -> new int[BLOCK / 4]);

    /** A block's 64-bit value from its final lanes and its length in bytes. */
    static long blockValue(int[] lanes, int len) {
        long r = len * P64;
        for (int j = 0; j < LANES; j++) {
            r = (r ^ (lanes[j] & 0xFFFFFFFFL)) * P64;
            r ^= r >>> 29;
        }
        return r;
    }

    /** Running value of a string of blocks after one more block. */
    static long append(long t, long block) {
        return t * R + block;
    }

    /** Running value of A followed by B, from both and the number of blocks of B. */
    static long combine(long a, long b, long blocksOfB) {
        long m = 1;
        long base = R;
        for (long e = blocksOfB; e != 0; e >>>= 1) {
            if ((e & 1) != 0) {
                m *= base;
            }
            base *= base;
        }
        return a * m + b;
    }

    /** The checksum of a string from its running value and its length in bytes. */
    static long finish(long t, long length) {
        return fmix64(t ^ length * C);
    }

    /** The tg1 checksum of the {@code remaining()} bytes of {@code b}. */
    public static long of(ByteBuffer b) {
        return ofSegments(b);
    }

    /**
     * The tg1 checksum of segments that follow each other (a file: its header, then its
     * tensors), each cut into its own blocks: the element-wise form of the definition, which the
     * scanner must match however it splits the work.
     */
    public static long ofSegments(ByteBuffer... segments) {
        int[] lanes = new int[LANES];
        long t = 0;
        long length = 0;
        for (ByteBuffer segment : segments) {
            ByteBuffer b = segment.duplicate().order(ByteOrder.LITTLE_ENDIAN);
            for (int p = b.position(); p < b.limit(); p += BLOCK) {
                int n = Math.min(BLOCK, b.limit() - p);
                seed(lanes);
                feed(b, p, n, lanes);
                t = append(t, blockValue(lanes, n));
            }
            length += b.remaining();
        }
        return finish(t, length);
    }

    static long fmix64(long k) {
        k ^= k >>> 33;
        k *= 0xFF51AFD7ED558CCDL;
        k ^= k >>> 33;
        k *= 0xC4CEB9FE1A85EC53L;
        k ^= k >>> 33;
        return k;
    }

    public static String hex(long v) {
        return String.format("%016x", v);
    }
}
