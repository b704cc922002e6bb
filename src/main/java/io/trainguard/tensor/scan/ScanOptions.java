package io.trainguard.tensor.scan;

/**
 * What a scan computes.
 *
 * @param checksum content checksum per tensor and for the whole file
 * @param stats    max|x| and the L2 norm; without them only the finite check runs
 * @param simd     use the Vector API kernels when the JVM offers them (see {@link ScanKernels#SIMD_AVAILABLE})
 */
public record ScanOptions(Checksum checksum, boolean stats, boolean simd) {
    public static final ScanOptions FULL = new ScanOptions(Checksum.TG1, true, true);
}
