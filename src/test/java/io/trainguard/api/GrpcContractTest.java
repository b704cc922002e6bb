package io.trainguard.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import grpc.health.v1.HealthOuterClass.HealthCheckRequest;
import grpc.health.v1.HealthOuterClass.HealthCheckResponse;
import grpc.health.v1.HealthGrpc;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.StreamObserver;
import io.netty.channel.epoll.EpollDomainSocketChannel;
import io.netty.channel.epoll.EpollEventLoopGroup;
import io.netty.channel.unix.DomainSocketAddress;
import io.quarkus.test.junit.QuarkusTest;
import io.trainguard.api.grpc.v1.Action;
import io.trainguard.api.grpc.v1.BeginValidationRequest;
import io.trainguard.api.grpc.v1.CloseRunRequest;
import io.trainguard.api.grpc.v1.DType;
import io.trainguard.api.grpc.v1.EndValidationRequest;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.IncidentKind;
import io.trainguard.api.grpc.v1.InspectTensorsRequest;
import io.trainguard.api.grpc.v1.ModelDescription;
import io.trainguard.api.grpc.v1.ModuleStats;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.ParameterGroup;
import io.trainguard.api.grpc.v1.PrecisionSetup;
import io.trainguard.api.grpc.v1.ReportStepRequest;
import io.trainguard.api.grpc.v1.RunState;
import io.trainguard.api.grpc.v1.StepReport;
import io.trainguard.api.grpc.v1.StreamStepsRequest;
import io.trainguard.api.grpc.v1.StreamStepsResponse;
import io.trainguard.api.grpc.v1.TrainGuardServiceGrpc;
import io.trainguard.api.grpc.v1.ValidationAudit;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;

@QuarkusTest
class GrpcContractTest extends SidecarTestSupport {

    @Test
    void reportStep_nanLoss_skipsAndGetRunShowsIncident() {
        String run = Sidecar.newRunId("nan");
        sidecar.open(run, 0, 1);
        assertEquals(Action.ACTION_APPLY, sidecar.report(run, 0, 0, 2.0, 0.5).getAction());
        var verdict = sidecar.report(run, 0, 1, Double.NaN, 0.5);
        assertEquals(Action.ACTION_SKIP, verdict.getAction());
        assertEquals(RunState.RUN_STATE_DEGRADED, verdict.getRunState());
        var got = sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build());
        assertEquals(1, got.getRun().getLastStep());
        assertEquals(IncidentKind.INCIDENT_KIND_NON_FINITE_LOSS, got.getIncidents(0).getKind());
        assertEquals(verdict.getIncidentIds(0), got.getIncidents(0).getIncidentId());
    }

    @Test
    void reportStep_emptyRequest_saysReportIsMissing() {
        // Prevents: a valid but empty request (it equalled the garbled-frame marker) answered as an unparseable frame.
        var e = assertThrows(StatusRuntimeException.class,
                () -> sidecar.withDeadline().reportStep(ReportStepRequest.getDefaultInstance()));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
        assertTrue(e.getStatus().getDescription().contains("report is missing"), e.getStatus().getDescription());
    }

    @Test
    void reportStep_nanInModule_namesFirstModule() {
        String run = Sidecar.newRunId("module");
        sidecar.withDeadline().openRun(OpenRunRequest.newBuilder().setRunId(run).setWorldSize(1)
                .setModel(ModelDescription.newBuilder().addAllWatchedModules(List.of("imageproj", "attn0", "attn1"))).build());
        var report = StepReport.newBuilder().setRunId(run).setStep(2).setLoss(Double.NaN).setGradNorm(Double.NaN)
                .setModuleStats(ModuleStats.newBuilder().addAllFinite(List.of(false, false, false))
                        .addAllMaxAbs(List.of(Double.NaN, Double.NaN, Double.NaN)));
        var verdict = sidecar.withDeadline().reportStep(ReportStepRequest.newBuilder().setReport(report).build()).getVerdict();
        assertEquals(Action.ACTION_SKIP, verdict.getAction());
        assertEquals("imageproj", verdict.getFirstNonfiniteModule());
    }

    @Test
    void streamSteps_lockStep_returnsOneVerdictPerReportInOrderAndSurvivesBadReport() throws Exception {
        String run = Sidecar.newRunId("stream");
        sidecar.open(run, 0, 1);
        List<StreamStepsResponse> got = new ArrayList<>();
        CountDownLatch done = new CountDownLatch(1);
        StreamObserver<StreamStepsRequest> requests = TrainGuardServiceGrpc.newStub(sidecar.channel).streamSteps(new StreamObserver<>() {
            @Override
            public void onNext(StreamStepsResponse value) {
                synchronized (got) {
                    got.add(value);
                }
            }

            @Override
            public void onError(Throwable t) {
                done.countDown();
            }

            @Override
            public void onCompleted() {
                done.countDown();
            }
        });
        for (int s = 0; s < 50; s++) {
            long step = s == 20 ? -5 : s; // one malformed report in the middle
            requests.onNext(StreamStepsRequest.newBuilder().setReport(StepReport.newBuilder().setRunId(run).setStep(step)
                    .setLoss(s == 30 ? Double.NaN : 2.0).setGradNorm(0.5)).build());
        }
        requests.onCompleted();
        assertTrue(done.await(20, TimeUnit.SECONDS));
        assertEquals(50, got.size());
        assertTrue(got.get(20).getError().startsWith("INVALID_ARGUMENT"), got.get(20).getError());
        assertEquals(Action.ACTION_SKIP, got.get(30).getVerdict().getAction());
        for (int s = 0; s < 50; s++) {
            if (s != 20) {
                assertEquals(s, got.get(s).getVerdict().getStep(), "verdicts come back in report order");
            }
        }
    }

    @Test
    void badInput_clearErrorsAndSidecarKeepsServing() {
        String run = Sidecar.newRunId("bad");
        sidecar.open(run, 0, 2);
        sidecar.report(run, 0, 0, 2.0, 0.5);
        var notFound = assertThrows(StatusRuntimeException.class, () -> sidecar.report("no-such-run", 0, 1, 1, 1));
        assertEquals(Status.Code.NOT_FOUND, notFound.getStatus().getCode());
        assertTrue(notFound.getStatus().getDescription().contains("call OpenRun"));
        var rank = assertThrows(StatusRuntimeException.class, () -> sidecar.report(run, 5, 1, 1, 1));
        assertEquals(Status.Code.INVALID_ARGUMENT, rank.getStatus().getCode());
        assertTrue(rank.getStatus().getDescription().contains("ranks are 0..1"));
        var negative = assertThrows(StatusRuntimeException.class, () -> sidecar.report(run, 0, -1, 1, 1));
        assertEquals(Status.Code.INVALID_ARGUMENT, negative.getStatus().getCode());
        var arrays = assertThrows(StatusRuntimeException.class, () -> sidecar.withDeadline().reportStep(ReportStepRequest.newBuilder()
                .setReport(StepReport.newBuilder().setRunId(run).setStep(3).setModuleStats(ModuleStats.newBuilder()
                        .addAllNames(List.of("a", "b")).addAllFinite(List.of(true)))).build()));
        assertEquals(Status.Code.INVALID_ARGUMENT, arrays.getStatus().getCode());
        assertTrue(arrays.getStatus().getDescription().contains("inconsistent"));
        var huge = assertThrows(StatusRuntimeException.class, () -> sidecar.withDeadline().inspectTensors(InspectTensorsRequest
                .newBuilder().setRunId(run).setSafetensors(ByteString.copyFrom(new byte[20 * 1024 * 1024])).build()));
        assertEquals(Status.Code.RESOURCE_EXHAUSTED, huge.getStatus().getCode());
        var policy = assertThrows(StatusRuntimeException.class, () -> sidecar.withDeadline().openRun(OpenRunRequest.newBuilder()
                .setRunId(run).setWorldSize(2).setPolicy(io.trainguard.api.grpc.v1.Policy.newBuilder().setSpikeEmaAlpha(3)).build()));
        assertEquals(Status.Code.INVALID_ARGUMENT, policy.getStatus().getCode());
        // Still serving, and what was journaled before is intact.
        assertEquals(Action.ACTION_APPLY, sidecar.report(run, 1, 0, 2.0, 0.5).getAction());
        assertEquals(2, sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getRun().getStepsReported());
        sidecar.withDeadline().closeRun(CloseRunRequest.newBuilder().setRunId(run).setRank(0).build());
        sidecar.withDeadline().closeRun(CloseRunRequest.newBuilder().setRunId(run).setRank(1).build());
        var closed = assertThrows(StatusRuntimeException.class, () -> sidecar.report(run, 0, 9, 1, 1));
        assertEquals(Status.Code.FAILED_PRECONDITION, closed.getStatus().getCode());
    }

    @Test
    void openRun_halloPureFp16Setup_refusedBeforeStepOne() {
        // Hallo bug B caught at OpenRun: fp16 AdamW state makes eps=1e-8 zero.
        var e = assertThrows(StatusRuntimeException.class, () -> sidecar.withDeadline().openRun(OpenRunRequest.newBuilder()
                .setRunId(Sidecar.newRunId("hallo")).setWorldSize(1)
                .setModel(ModelDescription.newBuilder().addParameterGroups(ParameterGroup.newBuilder().setName("imageproj")
                        .setDtype(DType.D_TYPE_FLOAT16).setTrainable(true).setParameterCount(1000)))
                .setPrecision(PrecisionSetup.newBuilder().setParameterDtype(DType.D_TYPE_FLOAT16).setOptimizerName("AdamW")
                        .setOptimizerEps(1e-8)).build()));
        assertEquals(Status.Code.FAILED_PRECONDITION, e.getStatus().getCode());
        assertTrue(e.getStatus().getDescription().contains("EPS_UNDERFLOW"), e.getStatus().getDescription());
        assertTrue(e.getStatus().getDescription().contains("FP16_WITHOUT_MASTER_WEIGHTS"));
    }

    @Test
    void openRun_again_resumesInsteadOfResetting() {
        String run = Sidecar.newRunId("resume");
        sidecar.open(run, 0, 1);
        for (int s = 0; s < 5; s++) {
            sidecar.report(run, 0, s, 2.0, 0.5);
        }
        var again = sidecar.withDeadline().openRun(OpenRunRequest.newBuilder().setRunId(run).setWorldSize(1)
                .setTrainerInstance("restarted").build());
        assertTrue(again.getResumed());
        assertEquals(4, again.getRun().getLastStep());
    }

    @Test
    void validation_gateAndMutationAudit_recordsIncident() {
        String run = Sidecar.newRunId("val");
        sidecar.open(run, 0, 1);
        for (int s = 0; s <= 5; s++) {
            var v = sidecar.report(run, 0, s, 2.0, 0.5);
            assertEquals(s == 5, v.getValidationAllowed(), "step " + s);
        }
        assertFalse(sidecar.withDeadline().beginValidation(BeginValidationRequest.newBuilder().setRunId(run).setStep(3).build()).getAllowed());
        assertTrue(sidecar.withDeadline().beginValidation(BeginValidationRequest.newBuilder().setRunId(run).setStep(5).build()).getAllowed());
        var end = sidecar.withDeadline().endValidation(EndValidationRequest.newBuilder().setRunId(run).setStep(5)
                .setAudit(ValidationAudit.newBuilder().setWiringChanged(true).setRngChanged(true)
                        .addDetails("blocks.0.attn.forward replaced").setRestored(true)).build());
        assertEquals(1, end.getIncidentIdsCount());
        var incidents = sidecar.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getIncidentsList();
        assertEquals(IncidentKind.INCIDENT_KIND_VALIDATION_MUTATION, incidents.get(0).getKind());
        assertTrue(incidents.get(0).getMessage().contains("blocks.0.attn.forward replaced"));
    }

    @Test
    void grpcHealth_andUnixSocket_serve() throws Exception {
        var health = HealthGrpc.newBlockingStub(sidecar.channel).withDeadlineAfter(5, TimeUnit.SECONDS)
                .check(HealthCheckRequest.newBuilder().build());
        assertEquals(HealthCheckResponse.ServingStatus.SERVING, health.getStatus());
        EpollEventLoopGroup group = new EpollEventLoopGroup(1);
        var uds = NettyChannelBuilder.forAddress(new DomainSocketAddress(Path.of("target/test-data/trainguard.sock").toAbsolutePath().toString()))
                .eventLoopGroup(group).channelType(EpollDomainSocketChannel.class).overrideAuthority("localhost").usePlaintext().build();
        try (Sidecar overSocket = new Sidecar(uds)) {
            String run = Sidecar.newRunId("uds");
            overSocket.open(run, 0, 1);
            assertEquals(Action.ACTION_CLIP, overSocket.report(run, 0, 0, 1.0, 5.0).getAction());
        } finally {
            group.shutdownGracefully();
        }
    }
}
