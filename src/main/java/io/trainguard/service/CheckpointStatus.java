package io.trainguard.service;

import io.trainguard.checkpoint.CheckpointRecord;
import io.trainguard.checkpoint.VerificationProgress;
import java.util.Optional;

/** A checkpoint as recorded, with its verification progress while it is being verified. */
public record CheckpointStatus(CheckpointRecord record, Optional<VerificationProgress> progress) {
}
