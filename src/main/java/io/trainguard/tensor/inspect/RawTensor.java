package io.trainguard.tensor.inspect;

import io.trainguard.tensor.format.TensorDType;
import java.nio.ByteBuffer;

/** One tensor as the trainer ships it: little-endian, C order (mirrors trainguard.v1.RawTensor). */
public record RawTensor(String name, TensorDType dtype, long[] shape, ByteBuffer data) {
}
