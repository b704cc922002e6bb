package io.trainguard.reliability;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.ClientInterceptors;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.MetadataUtils;
import io.netty.channel.epoll.EpollDomainSocketChannel;
import io.netty.channel.epoll.EpollEventLoopGroup;
import io.netty.channel.unix.DomainSocketAddress;
import io.trainguard.PackagedSidecar;
import io.trainguard.api.Sidecar;
import io.trainguard.api.grpc.v1.CloseRunRequest;
import io.trainguard.api.grpc.v1.GetRunRequest;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.Policy;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import io.trainguard.api.grpc.v1.RunState;
import io.trainguard.api.grpc.v1.TrainGuardServiceGrpc;
import io.trainguard.api.grpc.v1.UpdatePolicyRequest;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The packaged sidecar with a bearer token: writes over TCP need it, browsers cannot write at all. */
class AuthenticatedWritesIT {
    static final String TOKEN = "test-token-0123456789abcdef";
    @TempDir
    static Path dir;
    static PackagedSidecar sidecar;
    static Sidecar anonymous;
    static Sidecar authorized;
    static EpollEventLoopGroup udsGroup;
    static Sidecar overSocket;
    final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();

    @BeforeAll
    static void start() throws Exception {
        Path token = dir.resolve("token");
        Files.writeString(token, TOKEN + "\n");
        sidecar = new PackagedSidecar(dir).withJvmArgs("-Dtrainguard.auth.token-file=" + token).start();
        anonymous = new Sidecar(sidecar.port);
        Metadata md = new Metadata();
        md.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + TOKEN);
        var ch = NettyChannelBuilder.forAddress("127.0.0.1", sidecar.port).usePlaintext()
                .intercept(MetadataUtils.newAttachHeadersInterceptor(md)).build();
        authorized = new Sidecar(ch);
        udsGroup = new EpollEventLoopGroup(1);
        overSocket = new Sidecar(NettyChannelBuilder.forAddress(new DomainSocketAddress(dir.resolve("tg.sock").toString()))
                .eventLoopGroup(udsGroup).channelType(EpollDomainSocketChannel.class).overrideAuthority("localhost")
                .usePlaintext().build());
    }

    @AfterAll
    static void stop() throws Exception {
        anonymous.close();
        authorized.close();
        overSocket.close();
        udsGroup.shutdownGracefully();
        sidecar.close();
    }

    private static Status.Code code(Runnable call) {
        return assertThrows(StatusRuntimeException.class, call::run).getStatus().getCode();
    }

    private String haltedRun() {
        String run = Sidecar.newRunId("auth");
        overSocket.open(run, 0, 1);
        for (int s = 0; s < 4; s++) {
            overSocket.report(run, 0, s, Double.NaN, 1);
        }
        assertEquals(RunState.RUN_STATE_HALTED, getState(run));
        return run;
    }

    private RunState getState(String run) {
        return anonymous.withDeadline().getRun(GetRunRequest.newBuilder().setRunId(run).build()).getRun().getState();
    }

    // Prevents: anyone reaching the TCP port could open, close, re-police runs and register checkpoints.
    @Test
    void grpcWrites_overTcpWithoutToken_areUnauthenticated() {
        String run = Sidecar.newRunId("auth");
        assertEquals(Status.Code.UNAUTHENTICATED, code(() -> anonymous.open(run, 0, 1)));
        authorized.open(run, 0, 1);
        assertEquals(Status.Code.UNAUTHENTICATED, code(() -> anonymous.withDeadline().updatePolicy(UpdatePolicyRequest
                .newBuilder().setRunId(run).setPolicy(Policy.newBuilder().setClipThreshold(5)).build())));
        assertEquals(Status.Code.UNAUTHENTICATED, code(() -> anonymous.withDeadline().closeRun(
                CloseRunRequest.newBuilder().setRunId(run).build())));
        assertEquals(Status.Code.UNAUTHENTICATED, code(() -> anonymous.withDeadline().registerCheckpoint(
                RegisterCheckpointRequest.newBuilder().setRunId(run).setStep(1).build())));
        assertEquals(Status.Code.UNAUTHENTICATED, code(() -> anonymous.report(run, 0, 0, 1.0, 0.5)));
        var wrong = assertThrows(StatusRuntimeException.class, () -> TrainGuardServiceGrpc.newBlockingStub(
                ClientInterceptors.intercept(anonymous.channel, MetadataUtils.newAttachHeadersInterceptor(bearer("wrong-token-0123456789"))))
                .withDeadlineAfter(5, TimeUnit.SECONDS).closeRun(CloseRunRequest.newBuilder().setRunId(run).build()));
        assertEquals(Status.Code.UNAUTHENTICATED, wrong.getStatus().getCode());
        assertTrue(wrong.getStatus().getDescription().contains("Bearer"), wrong.getStatus().getDescription());
        // reads stay open; with the token, writes work
        assertEquals(RunState.RUN_STATE_HEALTHY, getState(run));
        authorized.report(run, 0, 0, 1.0, 0.5);
        authorized.withDeadline().closeRun(CloseRunRequest.newBuilder().setRunId(run).build());
        assertEquals(RunState.RUN_STATE_CLOSED, getState(run));
    }

    // Prevents: a trainer in the pod needing the token although the socket's file permissions guard it.
    @Test
    void grpcWrites_overUnixSocketWithoutToken_areServed() {
        String run = Sidecar.newRunId("uds");
        overSocket.open(run, 0, 1);
        assertEquals(io.trainguard.api.grpc.v1.Action.ACTION_APPLY, overSocket.report(run, 0, 0, 1.0, 0.5).getAction());
    }

    private static Metadata bearer(String token) {
        Metadata md = new Metadata();
        md.put(Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER), "Bearer " + token);
        return md;
    }

    private HttpResponse<String> send(HttpRequest.Builder b) throws Exception {
        return http.send(b.timeout(Duration.ofSeconds(10)).build(), HttpResponse.BodyHandlers.ofString());
    }

    private URI uri(String path) {
        return URI.create("http://127.0.0.1:" + sidecar.port + path);
    }

    // Prevents: any web page open on the machine resuming a HALTED run (CSRF with a simple request).
    @Test
    void restResume_crossOriginSimpleRequest_isRefusedAndRunStaysHalted() throws Exception {
        String run = haltedRun();
        // what a <form> or fetch(no-cors) sends: no JSON content type, an Origin, no credentials
        var r = send(HttpRequest.newBuilder(uri("/api/runs/" + run + "/resume")).header("Origin", "http://evil.example")
                .POST(HttpRequest.BodyPublishers.noBody()));
        assertEquals(403, r.statusCode(), r.body());
        r = send(HttpRequest.newBuilder(uri("/api/runs/" + run + "/resume")).header("Content-Type", "text/plain")
                .header("Authorization", "Bearer " + TOKEN).POST(HttpRequest.BodyPublishers.ofString("{}")));
        assertEquals(415, r.statusCode(), r.body());
        r = send(HttpRequest.newBuilder(uri("/api/runs/" + run + "/resume")).header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString("{}")));
        assertEquals(401, r.statusCode(), r.body());
        assertTrue(r.body().contains("Bearer"), r.body());
        assertEquals(RunState.RUN_STATE_HALTED, getState(run));
        r = send(HttpRequest.newBuilder(uri("/api/runs/" + run + "/resume")).header("Content-Type", "application/json")
                .header("Authorization", "Bearer " + TOKEN).POST(HttpRequest.BodyPublishers.ofString("{\"reason\":\"on-call\"}")));
        assertEquals(200, r.statusCode(), r.body());
        assertFalse(getState(run) == RunState.RUN_STATE_HALTED);
    }

    // Prevents: a policy of 1e308 / Infinity thresholds that silently turns off all protection.
    @Test
    void restPolicy_infiniteOrHugeThreshold_isRefusedWith400() throws Exception {
        String run = Sidecar.newRunId("pol");
        overSocket.open(run, 0, 1);
        for (String body : new String[] {"{\"clipThreshold\": 1e308}", "{\"spikeZThreshold\": \"Infinity\"}", "null", ""}) {
            var r = send(HttpRequest.newBuilder(uri("/api/runs/" + run + "/policy")).header("Content-Type", "application/json")
                    .header("Authorization", "Bearer " + TOKEN).PUT(HttpRequest.BodyPublishers.ofString(body)));
            assertEquals(400, r.statusCode(), body + " -> " + r.body());
        }
    }
}
