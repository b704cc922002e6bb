package io.trainguard.checkpoint;

/** Mirrors trainguard.v1.CheckpointFormat. */
public enum CheckpointFormat { SAFETENSORS, NPY, NPZ, TORCHSCRIPT, TORCH_PICKLE }
