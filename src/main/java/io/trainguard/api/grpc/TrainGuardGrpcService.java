package io.trainguard.api.grpc;

import io.grpc.stub.StreamObserver;
import io.quarkus.grpc.GrpcService;
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
import io.trainguard.api.grpc.v1.InspectTensorsRequest;
import io.trainguard.api.grpc.v1.InspectTensorsResponse;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.OpenRunResponse;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import io.trainguard.api.grpc.v1.RegisterCheckpointResponse;
import io.trainguard.api.grpc.v1.ReportStepRequest;
import io.trainguard.api.grpc.v1.ReportStepResponse;
import io.trainguard.api.grpc.v1.StreamStepsRequest;
import io.trainguard.api.grpc.v1.StreamStepsResponse;
import io.trainguard.api.grpc.v1.TrainGuardServiceGrpc;
import io.trainguard.api.grpc.v1.UpdatePolicyRequest;
import io.trainguard.api.grpc.v1.UpdatePolicyResponse;
import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.guard.GuardService;
import io.trainguard.guard.IncidentKind;
import io.trainguard.guard.Severity;
import io.trainguard.tensor.TensorInspector;
import io.trainguard.guard.InvalidRequestException;
import java.util.function.Supplier;

/** gRPC adapter: proto in, engine call, proto out. Errors go through {@link GrpcErrors}. */
@GrpcService
public class TrainGuardGrpcService extends TrainGuardServiceGrpc.TrainGuardServiceImplBase {

    private final GuardService guard;
    private final CheckpointRegistry checkpoints;
    private final TensorInspector inspector;

    public TrainGuardGrpcService(GuardService guard, CheckpointRegistry checkpoints, TensorInspector inspector) {
        this.guard = guard;
        this.checkpoints = checkpoints;
        this.inspector = inspector;
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
    public void openRun(OpenRunRequest request, StreamObserver<OpenRunResponse> observer) {
        respond(observer, () -> {
            var result = guard.open(ProtoMapper.setup(request));
            return OpenRunResponse.newBuilder().setRun(ProtoMapper.run(result.run())).setResumed(result.resumed())
                    .addAllFindings(result.findings().stream().map(ProtoMapper::finding).toList())
                    .setBounds(ProtoMapper.bounds(result.bounds())).build();
        });
    }

    @Override
    public void reportStep(ReportStepRequest request, StreamObserver<ReportStepResponse> observer) {
        respond(observer, () -> {
            if (!request.hasReport()) {
                throw new InvalidRequestException("report is missing: set ReportStepRequest.report");
            }
            requireRunId(request.getReport().getRunId());
            var verdict = guard.report(ProtoMapper.report(request.getReport()));
            return ReportStepResponse.newBuilder().setVerdict(ProtoMapper.verdict(verdict)).build();
        });
    }

    @Override
    public StreamObserver<StreamStepsRequest> streamSteps(StreamObserver<StreamStepsResponse> observer) {
        return new StreamObserver<>() {
            @Override
            public void onNext(StreamStepsRequest request) {
                StreamStepsResponse response;
                try {
                    requireRunId(request.getReport().getRunId());
                    var verdict = guard.report(ProtoMapper.report(request.getReport()));
                    response = StreamStepsResponse.newBuilder().setVerdict(ProtoMapper.verdict(verdict)).build();
                } catch (RuntimeException e) {
                    // One bad report must not tear down the stream every later step relies on.
                    var status = GrpcErrors.toStatus(e).getStatus();
                    response = StreamStepsResponse.newBuilder().setError(status.getCode() + ": " + status.getDescription())
                            .setErrorStep(request.getReport().getStep()).build();
                }
                observer.onNext(response);
            }

            @Override
            public void onError(Throwable t) {
                // The trainer went away; nothing to answer.
            }

            @Override
            public void onCompleted() {
                observer.onCompleted();
            }
        };
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
    public void endValidation(EndValidationRequest request, StreamObserver<EndValidationResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var ids = guard.endValidation(request.getRunId(), request.getRank(), request.getStep(),
                    ProtoMapper.audit(request.getAudit()));
            return EndValidationResponse.newBuilder().addAllIncidentIds(ids).build();
        });
    }

    @Override
    public void registerCheckpoint(RegisterCheckpointRequest request, StreamObserver<RegisterCheckpointResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            guard.run(request.getRunId());
            var record = checkpoints.register(request.getRunId(), request.getStep(), CheckpointMapper.format(request.getFormat()),
                    CheckpointMapper.files(request), request.getDataPosition());
            return RegisterCheckpointResponse.newBuilder()
                    .setCheckpoint(CheckpointMapper.checkpoint(record, checkpoints.progress(record.id()))).build();
        });
    }

    @Override
    public void inspectTensors(InspectTensorsRequest request, StreamObserver<InspectTensorsResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            guard.run(request.getRunId());
            var summaries = request.getSafetensors().isEmpty()
                    ? inspector.inspect(CheckpointMapper.rawTensors(request.getTensorsList()))
                    : inspector.inspectSafetensors(CheckpointMapper.blob(request.getSafetensors()));
            var incident = guard.recordIncident(request.getRunId(), request.getRank(), request.getStep(),
                    IncidentKind.TENSOR_FORENSICS, Severity.INFO, ForensicsText.describe(request.getIncidentId(), summaries));
            var b = InspectTensorsResponse.newBuilder().setIncidentId(incident.id());
            summaries.forEach(s -> b.addSummaries(CheckpointMapper.summary(s)));
            return b.build();
        });
    }

    @Override
    public void getRun(GetRunRequest request, StreamObserver<GetRunResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var view = guard.view(request.getRunId(), request.getIncidentLimit());
            return GetRunResponse.newBuilder().setRun(ProtoMapper.run(view.run()))
                    .addAllIncidents(view.incidents().stream().map(ProtoMapper::incident).toList())
                    .addAllCheckpoints(checkpoints.list(request.getRunId()).stream()
                            .map(c -> CheckpointMapper.checkpoint(c, checkpoints.progress(c.id()))).toList()).build();
        });
    }

    @Override
    public void updatePolicy(UpdatePolicyRequest request, StreamObserver<UpdatePolicyResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var policy = guard.updatePolicy(request.getRunId(), ProtoMapper.overrides(request.getPolicy()), request.getReason());
            return UpdatePolicyResponse.newBuilder().setPolicy(ProtoMapper.policy(policy)).build();
        });
    }

    @Override
    public void closeRun(CloseRunRequest request, StreamObserver<CloseRunResponse> observer) {
        respond(observer, () -> {
            requireRunId(request.getRunId());
            var run = guard.close(request.getRunId(), request.getRank(), request.getReason());
            return CloseRunResponse.newBuilder().setRun(ProtoMapper.run(run)).build();
        });
    }
}
