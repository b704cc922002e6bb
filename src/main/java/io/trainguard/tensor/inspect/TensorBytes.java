package io.trainguard.tensor.inspect;

import io.trainguard.tensor.format.TensorDType;
import java.io.IOException;
import java.nio.ByteBuffer;

/**
 * One tensor of a checkpoint file, readable piece by piece in C order (little-endian), whatever
 * the file's layout: a safetensors range, a torch.save storage view (strided or not), a DCP chunk.
 * Forensics reads through this so that no tensor is ever held whole in memory.
 */
public interface TensorBytes {
    String name();

    TensorDType dtype();

    long[] shape();

    default long elements() {
        long n = 1;
        for (long d : shape()) {
            n = Math.multiplyExact(n, d);
        }
        return n;
    }

    default long byteLength() {
        return elements() * dtype().byteSize();
    }

    /**
     * Puts elements {@code [from, from + count)} (flat C-order indices) into {@code dst} at its
     * position, {@code count * dtype().byteSize()} bytes, little-endian.
     */
    void read(long from, int count, ByteBuffer dst) throws IOException;
}
