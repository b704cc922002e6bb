package io.trainguard.tensor.scan;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotEquals;

import io.trainguard.tensor.format.TensorDType;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.HashSet;
import java.util.Random;
import java.util.Set;
import org.junit.jupiter.api.Test;

class ContentHashTest {
    private static byte[] pattern(int n) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) {
            b[i] = (byte) (i * 7 + 3);
        }
        return b;
    }

    private static long tg1(byte[] b) {
        return ContentHash.of(ByteBuffer.wrap(b));
    }

    @Test
    void of_knownStrings_matchThePythonReference() {
        // prevents: the Java and Python implementations drifting apart (values printed by
        // clients/python/trainguard/checksum.py: tg1(b""), tg1(b"trainguard"), tg1(pattern))
        assertEquals("0000000000000000", ContentHash.hex(tg1(new byte[0])));
        assertEquals("307a5862ae24af81", ContentHash.hex(tg1("trainguard".getBytes(StandardCharsets.US_ASCII))));
        assertEquals("dfd36bcd658d5fed", ContentHash.hex(tg1(pattern(100_000))));
    }

    @Test
    void of_anySingleWordChanged_checksumChanges() {
        // prevents: a change the checksum cannot see; every lane step is a bijection, so a
        // single changed word must always show, wherever it is and whatever the new value
        byte[] b = pattern(3 * ContentHash.BLOCK + 77);
        long base = tg1(b);
        Random r = new Random(3);
        for (int trial = 0; trial < 2000; trial++) {
            byte[] c = b.clone();
            int at = r.nextInt(c.length);
            c[at] ^= (byte) (1 + r.nextInt(255));
            assertNotEquals(base, tg1(c), "byte " + at);
        }
    }

    @Test
    void of_twoSignFlipsInOneLane_checksumChanges() {
        // prevents: the weakness of a plain multiply-xor hash, where flipping the top bit of two
        // words of the same lane cancels out (two weights negated would go unnoticed)
        ByteBuffer f = ByteBuffer.allocate(4096).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < 1024; i++) {
            f.putFloat(i * 4, 0.01f * (i % 13) + 0.5f);
        }
        long base = ContentHash.of(f.duplicate());
        for (int k = 1; k < 20; k++) {
            ByteBuffer g = ByteBuffer.allocate(4096).order(ByteOrder.LITTLE_ENDIAN).put(f.duplicate()).flip();
            g.putFloat(5 * 4, -g.getFloat(5 * 4));
            g.putFloat((5 + 32 * k) * 4, -g.getFloat((5 + 32 * k) * 4)); // same lane, k rows later
            assertNotEquals(base, ContentHash.of(g), "rows apart: " + k);
        }
    }

    @Test
    void of_reorderedTruncatedOrZeroExtended_checksumChanges() {
        // prevents: two blocks swapped, a file cut short, or trailing zeros (the padding) passing
        byte[] b = new Random(5).ints(2 * ContentHash.BLOCK, 0, 256).collect(
                java.io.ByteArrayOutputStream::new, (o, v) -> o.write(v), (x, y) -> { }).toByteArray();
        byte[] swapped = new byte[b.length];
        System.arraycopy(b, ContentHash.BLOCK, swapped, 0, ContentHash.BLOCK);
        System.arraycopy(b, 0, swapped, ContentHash.BLOCK, ContentHash.BLOCK);
        byte[] shorter = java.util.Arrays.copyOf(b, b.length - 1);
        byte[] longer = java.util.Arrays.copyOf(b, b.length + 4);
        Set<Long> seen = new HashSet<>();
        for (byte[] x : new byte[][] {b, swapped, shorter, longer}) {
            seen.add(tg1(x));
        }
        assertEquals(4, seen.size());
        assertNotEquals(tg1(new byte[3]), tg1(new byte[4]));
    }

    @Test
    void combine_piecesOnBlockBoundaries_equalTheWhole() {
        // prevents: a tensor scanned in pieces on several threads getting another checksum than
        // the same bytes read in one go
        byte[] b = pattern(5 * ContentHash.BLOCK + 123);
        ByteBuffer all = ByteBuffer.wrap(b).order(ByteOrder.LITTLE_ENDIAN);
        ScanAccumulator whole = ScanAccumulator.withChecksum(Checksum.TG1);
        // pieces [0,2B) [2B,3B) [3B,end): scanned separately, merged in order
        int[][] pieces = {{0, 2 * ContentHash.BLOCK}, {2 * ContentHash.BLOCK, ContentHash.BLOCK},
            {3 * ContentHash.BLOCK, b.length - 3 * ContentHash.BLOCK}};
        for (int[] p : pieces) {
            ScanAccumulator a = new ScanAccumulator();
            ScanKernels.scan(all, p[0], p[1], TensorDType.U8, a, ScanOptions.FULL);
            whole.merge(a);
        }
        assertEquals(tg1(b), whole.tg1());
    }
}
