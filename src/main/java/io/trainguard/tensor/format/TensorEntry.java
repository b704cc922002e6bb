package io.trainguard.tensor.format;

import java.util.Arrays;

/**
 * One tensor of a safetensors file; {@code begin}/{@code end} are byte offsets relative to the
 * start of the data section, end exclusive.
 */
public record TensorEntry(String name, TensorDType dtype, long[] shape, long begin, long end) {
    public long byteLength() {
        return end - begin;
    }

    public long elementCount() {
        return byteLength() / dtype.byteSize();
    }

    @Override
    public String toString() {
        return name + " " + dtype + Arrays.toString(shape) + " @[" + begin + "," + end + ")";
    }
}
