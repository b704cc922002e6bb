package io.trainguard.tensor.format.torch;

import java.util.Arrays;

/**
 * A tensor as {@code torch._utils._rebuild_tensor_v2} would build it: a view of {@code storage}
 * starting {@code offset} elements in, with {@code shape} and {@code stride} in elements.
 */
public record TensorRef(StorageRef storage, long offset, long[] shape, long[] stride) {
    public long elements() {
        long n = 1;
        for (long s : shape) {
            n *= s;
        }
        return n;
    }

    /**
     * The elements of the storage the view touches, [first, end): exact when the view is dense
     * (its elements form one range, in any dimension order), the covering span otherwise.
     */
    public long[] span() {
        if (elements() == 0) {
            return new long[] {offset, offset};
        }
        long last = offset;
        for (int i = 0; i < shape.length; i++) {
            last += (shape[i] - 1) * stride[i];
        }
        return new long[] {offset, last + 1};
    }

    /** True when the view's elements are exactly its span (contiguous, transposed, permuted). */
    public boolean dense() {
        long[] s = span();
        return s[1] - s[0] == elements();
    }

    @Override
    public String toString() {
        return storage.key() + "+" + offset + " " + Arrays.toString(shape) + "/" + Arrays.toString(stride);
    }
}
