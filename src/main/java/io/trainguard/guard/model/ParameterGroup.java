package io.trainguard.guard.model;

public record ParameterGroup(String name, long parameterCount, DType dtype, boolean trainable, boolean hasMasterCopy) {
}
