package io.trainguard.tensor.scan;

import java.util.List;
import java.util.Optional;

/**
 * Outcome of scanning one file. {@code fileChecksum} covers the whole file (prefix, header and
 * data): "crc32c:..." is the CRC32C of its bytes, "tg1:..." the tg1 of its header and tensors as
 * {@link ContentHash} defines it; null when checksums were off.
 */
public record ScanResult(List<TensorStats> tensors, long bytes, long nanos, String fileChecksum) {
    public Optional<TensorStats> firstNonFinite() {
        return tensors.stream().filter(t -> !t.finite()).findFirst();
    }

    public long nonFiniteTensors() {
        return tensors.stream().filter(t -> !t.finite()).count();
    }

    public double bytesPerSecond() {
        return nanos == 0 ? 0 : bytes * 1e9 / nanos;
    }
}
