package io.trainguard.config;

import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.fault.FaultLedger;
import io.trainguard.guard.GuardService;
import io.trainguard.checkpoint.PathPolicy;
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
    RunOpening runOpening(GuardService guard, FaultLedger faults) {
        return new RunOpening(guard, faults);
    }

    @Produces
    @Singleton
    RunOverview runOverview(GuardService guard, CheckpointRegistry checkpoints) {
        return new RunOverview(guard, checkpoints);
    }

    @Produces
    @Singleton
    CheckpointIntake checkpointIntake(GuardService guard, CheckpointRegistry checkpoints) {
        return new CheckpointIntake(guard, checkpoints);
    }

    @Produces
    @Singleton
    TensorForensics tensorForensics(GuardService guard, TensorInspector inspector) {
        return new TensorForensics(guard, inspector);
    }

    @Produces
    @Singleton
    CheckpointForensics checkpointForensics(GuardService guard, CheckpointRegistry checkpoints, PathPolicy paths,
            DjlForensics djl, TrainguardConfig config) {
        return new CheckpointForensics(guard, checkpoints, paths, djl, config.tensor().forensicsMaxBytes());
    }

    @Produces
    @Singleton
    FaultReplay faultReplay(GuardService guard, FaultLedger faults) {
        return new FaultReplay(guard, faults);
    }
}
