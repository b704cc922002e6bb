package io.trainguard.tensor.scan;

/** Which content checksum a scan computes per tensor and per file. */
public enum Checksum {
    /** {@link ContentHash}: computed in the scan's vector loop, about a third of CRC32C's cost. */
    TG1,
    /** Plain CRC32C, recomputable with any crc32c tool (e.g. to compare with a GCS object's). */
    CRC32C,
    NONE;

    /** The prefix of a checksum value, as in "tg1:0123456789abcdef". */
    public String label() {
        return name().toLowerCase(java.util.Locale.ROOT);
    }
}
