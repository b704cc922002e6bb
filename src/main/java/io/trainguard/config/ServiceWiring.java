package io.trainguard.config;

import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.fault.FaultLedger;
import io.trainguard.checkpoint.PathPolicy;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.service.CheckpointForensics;
import io.trainguard.service.CheckpointIntake;
import io.trainguard.service.FaultReplay;
import io.trainguard.service.RunOpening;
import io.trainguard.service.RunOverview;
import io.trainguard.service.TensorForensics;
import io.trainguard.tensor.inspect.DjlForensics;
import io.trainguard.tensor.inspect.TensorInspector;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.inject.Produces;
import jakarta.inject.Singleton;

/** Builds the application services: the workflows that join the engine with the other subsystems. */
@ApplicationScoped
public class ServiceWiring {

    @Produces
    @Singleton
    RunOpening runOpening(GuardedRuns guard, FaultLedger faults) {
        return new RunOpening(guard, faults);
    }

    @Produces
    @Singleton
    RunOverview runOverview(io.trainguard.guard.RunReads reads, CheckpointRegistry checkpoints) {
        return new RunOverview(reads, checkpoints);
    }

    @Produces
    @Singleton
    CheckpointIntake checkpointIntake(GuardedRuns guard, CheckpointRegistry checkpoints) {
        return new CheckpointIntake(guard, checkpoints);
    }

    @Produces
    @Singleton
    TensorForensics tensorForensics(GuardedRuns guard, TensorInspector inspector) {
        return new TensorForensics(guard, inspector);
    }

    @Produces
    @Singleton
    CheckpointForensics checkpointForensics(GuardedRuns guard, CheckpointRegistry checkpoints, PathPolicy paths,
            DjlForensics djl, TrainguardConfig config) {
        return new CheckpointForensics(guard, checkpoints, paths, djl, config.tensor().forensicsMaxBytes());
    }

    @Produces
    @Singleton
    FaultReplay faultReplay(GuardedRuns guard, FaultLedger faults) {
        return new FaultReplay(guard, faults);
    }
}
