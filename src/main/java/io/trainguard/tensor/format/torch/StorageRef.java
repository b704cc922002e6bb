package io.trainguard.tensor.format.torch;

import io.trainguard.tensor.format.TensorDType;

/**
 * A torch storage as the pickle names it: the zip record {@code data/<key>} holding
 * {@code elements} elements of {@code dtype}.
 */
public record StorageRef(String key, TensorDType dtype, long elements) {
}
