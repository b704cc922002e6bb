package io.trainguard.api;

import io.grpc.ManagedChannel;
import io.grpc.netty.NettyChannelBuilder;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.ReportStepRequest;
import io.trainguard.api.grpc.v1.StepReport;
import io.trainguard.api.grpc.v1.TrainGuardServiceGrpc;
import io.trainguard.api.grpc.v1.Verdict;
import java.util.UUID;
import java.util.concurrent.TimeUnit;

/** Real gRPC stubs against a running sidecar (the @QuarkusTest app or the packaged jar). */
public final class Sidecar implements AutoCloseable {
    public final ManagedChannel channel;
    public final TrainGuardServiceGrpc.TrainGuardServiceBlockingStub stub;

    public Sidecar(int port) {
        this(NettyChannelBuilder.forAddress("127.0.0.1", port).usePlaintext().build());
    }

    public Sidecar(ManagedChannel channel) {
        this.channel = channel;
        this.stub = TrainGuardServiceGrpc.newBlockingStub(channel);
    }

    public TrainGuardServiceGrpc.TrainGuardServiceBlockingStub withDeadline() {
        return stub.withDeadlineAfter(10, TimeUnit.SECONDS);
    }

    public static String newRunId(String prefix) {
        return prefix + "-" + UUID.randomUUID().toString().substring(0, 8);
    }

    public void open(String runId, int rank, int worldSize) {
        withDeadline().openRun(OpenRunRequest.newBuilder().setRunId(runId).setRank(rank).setWorldSize(worldSize)
                .setTrainerInstance("test").build());
    }

    public Verdict report(String runId, int rank, long step, double loss, double gradNorm) {
        return withDeadline().reportStep(ReportStepRequest.newBuilder().setReport(StepReport.newBuilder().setRunId(runId)
                .setRank(rank).setStep(step).setLoss(loss).setGradNorm(gradNorm).setLearningRate(1e-3)).build()).getVerdict();
    }

    @Override
    public void close() throws InterruptedException {
        channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    }
}
