package io.trainguard.tensor.scan;

/**
 * CRC32C (Castagnoli) combination, as zlib's crc32_combine: crc(A||B) from crc(A), crc(B) and
 * |B|. Lets pieces of one tensor be checksummed on several threads and still give the plain
 * CRC32C of the whole tensor, which anyone can recompute (e.g. python crc32c).
 */
public final class Crc32c {
    private static final int POLY = 0x82F63B78; // reflected Castagnoli polynomial

    private Crc32c() {
    }

    public static int combine(int crc1, int crc2, long len2) {
        if (len2 <= 0) {
            return crc1;
        }
        int[] even = new int[32];
        int[] odd = new int[32];
        odd[0] = POLY;
        int row = 1;
        for (int n = 1; n < 32; n++) {
            odd[n] = row;
            row <<= 1;
        }
        square(even, odd); // 2 zero bits
        square(odd, even); // 4 zero bits
        do {
            square(even, odd);
            if ((len2 & 1) != 0) {
                crc1 = times(even, crc1);
            }
            len2 >>>= 1;
            if (len2 == 0) {
                break;
            }
            square(odd, even);
            if ((len2 & 1) != 0) {
                crc1 = times(odd, crc1);
            }
            len2 >>>= 1;
        } while (len2 != 0);
        return crc1 ^ crc2;
    }

    private static int times(int[] mat, int vec) {
        int sum = 0;
        int i = 0;
        while (vec != 0) {
            if ((vec & 1) != 0) {
                sum ^= mat[i];
            }
            vec >>>= 1;
            i++;
        }
        return sum;
    }

    private static void square(int[] square, int[] mat) {
        for (int n = 0; n < 32; n++) {
            square[n] = times(mat, mat[n]);
        }
    }

    public static String hex(int crc) {
        return String.format("%08x", crc);
    }
}
