package io.trainguard.guard;

public record ParameterGroup(String name, long parameterCount, DType dtype, boolean trainable, boolean hasMasterCopy) {
}
