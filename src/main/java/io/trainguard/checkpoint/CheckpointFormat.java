package io.trainguard.checkpoint;

/** Mirrors trainguard.v1.CheckpointFormat. MEMORY: a snapshot the trainer holds in host memory. */
public enum CheckpointFormat { SAFETENSORS, NPY, NPZ, TORCHSCRIPT, TORCH_PICKLE, MEMORY }
