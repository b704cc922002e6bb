package io.trainguard.tensor;

/**
 * What a scan computes.
 *
 * @param checksum CRC32C per tensor and for the whole file
 * @param stats    max|x| and the L2 norm; without them only the finite check runs
 * @param simd     use the Vector API kernels when the JVM offers them (see {@link ScanKernels#SIMD_AVAILABLE})
 */
public record ScanOptions(boolean checksum, boolean stats, boolean simd) {
    public static final ScanOptions FULL = new ScanOptions(true, true, true);
}
