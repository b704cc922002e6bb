package io.trainguard.api.grpc;

import io.grpc.stub.StreamObserver;
import io.quarkus.grpc.GrpcService;
import io.smallrye.common.annotation.Blocking;
import io.trainguard.api.grpc.v1.BeginValidationRequest;
import io.trainguard.api.grpc.v1.BeginValidationResponse;
import io.trainguard.api.grpc.v1.CloseRunRequest;
import io.trainguard.api.grpc.v1.CloseRunResponse;
import io.trainguard.api.grpc.v1.EndValidationRequest;
import io.trainguard.api.grpc.v1.EndValidationResponse;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.GetRunResponse;
import io.trainguard.api.grpc.v1.HeartbeatRequest;
import io.trainguard.api.grpc.v1.HeartbeatResponse;
import io.trainguard.api.grpc.v1.InspectCheckpointRequest;
import io.trainguard.api.grpc.v1.InspectCheckpointResponse;
import io.trainguard.api.grpc.v1.InspectTensorsRequest;
import io.trainguard.api.grpc.v1.InspectTensorsResponse;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.OpenRunResponse;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import io.trainguard.api.grpc.v1.RegisterCheckpointResponse;
import io.trainguard.api.grpc.v1.ReportFaultRequest;
import io.trainguard.api.grpc.v1.ReportFaultResponse;
import io.trainguard.api.grpc.v1.ReportStepRequest;
import io.trainguard.api.grpc.v1.ReportStepResponse;
import io.trainguard.api.grpc.v1.RestoreFailedRequest;
import io.trainguard.api.grpc.v1.RestoreFailedResponse;
import io.trainguard.api.grpc.v1.StreamStepsRequest;
import io.trainguard.api.grpc.v1.StreamStepsResponse;
import io.trainguard.api.grpc.v1.TrainGuardServiceGrpc;
import io.trainguard.api.grpc.v1.UpdatePolicyRequest;
import io.trainguard.api.grpc.v1.UpdatePolicyResponse;
import io.trainguard.guard.GuardedRuns;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.service.CheckpointIntake;
import io.trainguard.service.CheckpointStatus;
import io.trainguard.service.FaultReplay;
import io.trainguard.service.RunOpening;
import io.trainguard.service.RunOverview;
import io.trainguard.service.CheckpointForensics;
import io.trainguard.service.TensorForensics;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.function.Supplier;

/**
 * gRPC adapter: proto in, one call to the engine ({@link GuardedRuns}) or to the application
 * service of a workflow that spans subsystems ({@code io.trainguard.service}), proto out. Errors
 * go through {@link GrpcErrors}.
 */
@GrpcService
public class TrainGuardGrpcService extends TrainGuardServiceGrpc.TrainGuardServiceImplBase {

    private final GuardedRuns guard;
    private final RunOpening opening;
    private final RunOverview overview;
    private final CheckpointIntake checkpoints;
    private final TensorForensics forensics;
    private final FaultReplay faults;
    private final CheckpointForensics checkpointForensics;

    public TrainGuardGrpcService(GuardedRuns guard, RunOpening opening, RunOverview overview, CheckpointIntake checkpoints,
            TensorForensics forensics, FaultReplay faults, CheckpointForensics checkpointForensics) {
        this.guard = guard;
        this.opening = opening;
        this.overview = overview;
        this.checkpoints = checkpoints;
        this.forensics = forensics;
        this.faults = faults;
        this.checkpointForensics = checkpointForensics;
    }

    /** Unparseable request frames reach the methods as a marker, answered INVALID_ARGUMENT. */
    @Override
    public io.grpc.ServerServiceDefinition bindService() {
        return GarbledFrames.tolerant(super.bindService());
    }

    private static <T> void respond(StreamObserver<T> observer, Supplier<T> call) {
        T response;
        try {
            response = call.get();
        } catch (RuntimeException e) {
            observer.onError(GrpcErrors.toStatus(e));
            return;
        }
        observer.onNext(response);
        observer.onCompleted();
    }

    private static void requireRunId(String runId) {
        if (runId.isEmpty()) {
            throw new InvalidRequestException("run_id is empty: every call names the run it belongs to");
        }
    }

    @Override
    @Blocking // waits for a journal commit
    public void openRun(OpenRunRequest request, StreamObserver<OpenRunResponse> observer) {
        respond(observer, () -> {
            var result = opening.open(ProtoMapper.setup(request));
            return OpenRunResponse.newBuilder().setRun(ProtoMapper.run(result.run())).setResumed(result.resumed())
                    .addAllFindings(result.findings().stream().map(ProtoMapper::finding).toList())
                    .setBounds(ProtoMapper.bounds(result.bounds())).build();
        });
    }

    /** Runs on the event loop; a verdict that must be journaled first is answered when the commit lands. */
    @Override
    public void reportStep(ReportStepRequest request, StreamObserver<ReportStepResponse> observer) {
        CompletableFuture<ReportStepResponse> response;
        try {
            if (!request.hasReport()) {
                throw new InvalidRequestException("report is missing: set ReportStepRequest.report");
            }
            response = decide(request.getReport())
                    .thenApply(v -> ReportStepResponse.newBuilder().setVerdict(v).build());
        } catch (RuntimeException e) {
            observer.onError(GrpcErrors.toStatus(e));
            return;
        }
        response.whenComplete((r, failure) -> {
            if (failure != null) {
                observer.onError(GrpcErrors.toStatus(unwrap(failure)));
            } else {
                observer.onNext(r);
                observer.onCompleted();
            }
        });
    }

    /** The one step path behind ReportStep and StreamSteps. */
    private CompletableFuture<io.trainguard.api.grpc.v1.Verdict> decide(io.trainguard.api.grpc.v1.StepReport report) {
        requireRunId(report.getRunId());
        return guard.reportAsync(ProtoMapper.report(report)).thenApply(ProtoMapper::verdict);
    }

    private static Throwable unwrap(Throwable t) {
        return t instanceof CompletionException && t.getCause() != null ? t.getCause() : t;
    }

    @Override
    public StreamObserver<StreamStepsRequest> streamSteps(StreamObserver<StreamStepsResponse> observer) {
        return new StreamObserver<>() {
            // Verdicts leave in report order even when one waits for the journal: each response is
            // chained behind the previous one.
            private CompletableFuture<Void> tail = CompletableFuture.completedFuture(null);
            private boolean ended;

            @Override
            public synchronized void onNext(StreamStepsRequest request) {
                if (ended) {
                    return;
                }
                if (GarbledFrames.isGarbled(request)) {
                    // the stream cannot be trusted past a frame it cannot read: end it, say why
                    ended = true;
                    tail.whenComplete((ok, failure) -> observer.onError(io.grpc.Status.INVALID_ARGUMENT
                            .withDescription(GarbledFrames.message("StreamSteps") + "; verdicts already sent stand, "
                                    + "open a new stream").asRuntimeException()));
                    return;
                }
                long step = request.getReport().getStep();
                CompletableFuture<StreamStepsResponse> response;
                try {
                    response = decide(request.getReport())
                            .thenApply(v -> StreamStepsResponse.newBuilder().setVerdict(v).build())
                            .exceptionally(failure -> errorResponse(unwrap(failure), step));
                } catch (RuntimeException e) {
                    // One bad report must not tear down the stream every later step relies on.
                    response = CompletableFuture.completedFuture(errorResponse(e, step));
                }
                if (tail.isDone() && response.isDone()) {
                    observer.onNext(response.join()); // the usual case: nothing waits, nothing to chain
                } else {
                    tail = tail.thenCombine(response, (previous, r) -> r).thenAccept(observer::onNext);
                }
            }

            @Override
            public void onError(Throwable t) {
                // The trainer went away; nothing to answer.
            }

            @Override
            public synchronized void onCompleted() {
                if (ended) {
                    return;
                }
                tail.whenComplete((ok, failure) -> observer.onCompleted());
            }
        };
    }

    private static StreamStepsResponse errorResponse(Throwable e, long step) {
        var status = GrpcErrors.toStatus(e).getStatus();
        return StreamStepsResponse.newBuilder().setError(status.getCode() + ": " + status.getDescription())
                .setErrorStep(step).build();
    }

    @Override
    public void heartbeat(HeartbeatRequest request, StreamObserver<HeartbeatResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var state = guard.heartbeat(request.getRunId(), request.getRank(), request.getStep(),
                    ProtoMapper.phase(request.getPhase()));
            return HeartbeatResponse.newBuilder().setRunState(ProtoMapper.state(state)).build();
        });
    }

    @Override
    public void beginValidation(BeginValidationRequest request, StreamObserver<BeginValidationResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var gate = guard.beginValidation(request.getRunId(), request.getRank(), request.getStep());
            return BeginValidationResponse.newBuilder().setAllowed(gate.allowed()).setReason(gate.reason()).build();
        });
    }

    @Override
    @Blocking // waits for a journal commit
    public void endValidation(EndValidationRequest request, StreamObserver<EndValidationResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var ids = guard.endValidation(request.getRunId(), request.getRank(), request.getStep(),
                    ProtoMapper.audit(request.getAudit()));
            return EndValidationResponse.newBuilder().addAllIncidentIds(ids).build();
        });
    }

    @Override
    @Blocking // waits for a journal commit
    public void registerCheckpoint(RegisterCheckpointRequest request, StreamObserver<RegisterCheckpointResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var registered = checkpoints.register(request.getRunId(), request.getStep(),
                    CheckpointMapper.format(request.getFormat()), CheckpointMapper.files(request), request.getDataPosition());
            return RegisterCheckpointResponse.newBuilder().setCheckpoint(checkpoint(registered)).build();
        });
    }

    @Override
    @Blocking // waits for a journal commit
    public void inspectTensors(InspectTensorsRequest request, StreamObserver<InspectTensorsResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var result = request.getSafetensors().isEmpty()
                    ? forensics.inspect(request.getRunId(), request.getRank(), request.getStep(), request.getIncidentId(),
                            CheckpointMapper.rawTensors(request.getTensorsList()))
                    : forensics.inspectSafetensors(request.getRunId(), request.getRank(), request.getStep(),
                            request.getIncidentId(), CheckpointMapper.blob(request.getSafetensors()));
            var b = InspectTensorsResponse.newBuilder().setIncidentId(result.incidentId());
            result.summaries().forEach(s -> b.addSummaries(CheckpointMapper.summary(s)));
            return b.build();
        });
    }

    @Override
    @Blocking // reads checkpoint files through DJL, then waits for a journal commit
    public void inspectCheckpoint(InspectCheckpointRequest request, StreamObserver<InspectCheckpointResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var result = checkpointForensics.inspect(request.getRunId(), request.getCheckpointId(),
                    request.getTensorsList());
            var b = InspectCheckpointResponse.newBuilder().setIncidentId(result.incidentId())
                    .setBytesInspected(result.bytes()).setElapsedMs(result.elapsedMs());
            result.tensors().forEach(t -> b.addTensors(CheckpointMapper.checkpointTensor(t)));
            return b.build();
        });
    }

    @Override
    @Blocking // waits for a journal commit
    public void reportFault(ReportFaultRequest request, StreamObserver<ReportFaultResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var result = faults.report(new FaultReplay.Report(request.getRunId(), request.getRank(), request.getStep(),
                    FaultMapper.faultClass(request.getFaultClass()), request.getDevice(), request.getDataPosition(),
                    request.getDetail()));
            return ReportFaultResponse.newBuilder().setIncidentId(result.incidentId())
                    .setDeviceTransients(result.deviceTransients()).setDeviceSuspect(result.deviceSuspect()).build();
        });
    }

    @Override
    @Blocking // waits for a journal commit
    public void restoreFailed(RestoreFailedRequest request, StreamObserver<RestoreFailedResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var verdict = guard.restoreFailed(request.getRunId(), request.getRank(), request.getStep(),
                    request.getCheckpointId(), request.getReason());
            return RestoreFailedResponse.newBuilder().setVerdict(ProtoMapper.verdict(verdict)).build();
        });
    }

    @Override
    @Blocking // waits for a journal commit
    public void getRun(GetRunRequest request, StreamObserver<GetRunResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var view = overview.get(request.getRunId(), request.getIncidentLimit());
            return GetRunResponse.newBuilder().setRun(ProtoMapper.run(view.run()))
                    .addAllIncidents(view.incidents().stream().map(ProtoMapper::incident).toList())
                    .addAllCheckpoints(view.checkpoints().stream().map(TrainGuardGrpcService::checkpoint).toList()).build();
        });
    }

    private static io.trainguard.api.grpc.v1.Checkpoint checkpoint(CheckpointStatus c) {
        return CheckpointMapper.checkpoint(c.record(), c.progress());
    }

    @Override
    @Blocking // waits for a journal commit
    public void updatePolicy(UpdatePolicyRequest request, StreamObserver<UpdatePolicyResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var policy = guard.updatePolicy(request.getRunId(), ProtoMapper.overrides(request.getPolicy()), request.getReason());
            return UpdatePolicyResponse.newBuilder().setPolicy(ProtoMapper.policy(policy)).build();
        });
    }

    @Override
    @Blocking // waits for a journal commit
    public void closeRun(CloseRunRequest request, StreamObserver<CloseRunResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var run = guard.close(request.getRunId(), request.getRank(), request.getReason());
            return CloseRunResponse.newBuilder().setRun(ProtoMapper.run(run)).build();
        });
    }
}
