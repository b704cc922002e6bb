package io.trainguard.reliability;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.ByteString;
import com.google.protobuf.Descriptors.FieldDescriptor;
import com.google.protobuf.Message;
import io.grpc.CallOptions;
import io.grpc.ClientCall;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.ClientCalls;
import io.trainguard.PackagedSidecar;
import io.trainguard.api.Sidecar;
import io.trainguard.api.grpc.v1.Action;
import io.trainguard.api.grpc.v1.CheckpointFile;
import io.trainguard.api.grpc.v1.CloseRunRequest;
import io.trainguard.api.grpc.v1.HeartbeatRequest;
import io.trainguard.api.grpc.v1.Phase;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import io.trainguard.api.grpc.v1.ReportStepRequest;
import io.trainguard.api.grpc.v1.StepReport;
import io.trainguard.api.grpc.v1.TrainGuardServiceGrpc;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Malformed and hostile requests against every gRPC method and REST endpoint of the packaged
 * sidecar (seeded, so a failure reproduces): no INTERNAL / 500, no frozen call, the process alive
 * and healthy afterwards, and a normal run still served. Counts go to docs/reliability.md.
 */
class HostileRequestsIT {
    static final long SEED = Long.getLong("trainguard.fuzz.seed", 20261129L);
    static final int GRPC_CALLS = Integer.getInteger("trainguard.fuzz.grpc-calls", 9_000);
    static final int STREAMS = 200;
    static final int REST_CALLS = 1_500;
    @TempDir
    static Path dir;
    static PackagedSidecar sidecar;
    static ManagedChannel channel;
    static Sidecar client;
    static final List<String> RUNS = new ArrayList<>();
    static final HttpClient HTTP = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();

    static final MethodDescriptor.Marshaller<byte[]> BYTES = new MethodDescriptor.Marshaller<>() {
        @Override
        public InputStream stream(byte[] value) {
            return new ByteArrayInputStream(value);
        }

        @Override
        public byte[] parse(InputStream stream) {
            try {
                return stream.readAllBytes();
            } catch (IOException e) {
                throw new IllegalStateException(e);
            }
        }
    };

    @BeforeAll
    static void start() throws Exception {
        Path roots = Files.createDirectories(dir.resolve("ckpt"));
        Path outside = Files.writeString(dir.resolve("outside-secret.txt"), "not a checkpoint");
        Files.createSymbolicLink(roots.resolve("link.safetensors"), outside);
        sidecar = new PackagedSidecar(dir).withJvmArgs("-Dtrainguard.checkpoint.roots=" + roots).start();
        channel = NettyChannelBuilder.forAddress("127.0.0.1", sidecar.port).usePlaintext()
                .maxInboundMessageSize(64 << 20).build();
        client = new Sidecar(channel);
        for (int i = 0; i < 3; i++) {
            String run = Sidecar.newRunId("fuzz");
            client.open(run, 0, 4);
            RUNS.add(run);
        }
    }

    @AfterAll
    static void stop() throws Exception {
        client.close();
        sidecar.close();
    }

    static MethodDescriptor<byte[], byte[]> raw(io.grpc.MethodDescriptor<?, ?> m) {
        return MethodDescriptor.<byte[], byte[]>newBuilder().setType(m.getType()).setFullMethodName(m.getFullMethodName())
                .setRequestMarshaller(BYTES).setResponseMarshaller(BYTES).build();
    }

    // ------------------------------------------------------------------ hostile message generator

    static final long[] LONGS = {0, 1, -1, 7, Integer.MAX_VALUE, Integer.MIN_VALUE, Long.MAX_VALUE, Long.MIN_VALUE,
        1 << 20, (1 << 20) + 1, 1L << 40, 315_576_000_000L, -315_576_000_001L};
    static final double[] DOUBLES = {0, -0.0, 1, -1, Double.NaN, Double.POSITIVE_INFINITY, Double.NEGATIVE_INFINITY,
        1e308, -1e308, Double.MIN_VALUE, 1e-300, 3.0};
    static final String[] STRINGS = {"", " ", "a", "../../etc/passwd", "/etc/passwd", "/proc/self/environ",
        "run\u0000nul", "\uD83D\uDE00", "x".repeat(200), "x".repeat(5000), "%s%n", "' OR 1=1 --", "<script>"};

    static Message hostile(Message.Builder b, Random rnd, int depth) {
        for (FieldDescriptor f : b.getDescriptorForType().getFields()) {
            if (rnd.nextInt(3) == 0) {
                continue;
            }
            if (f.isMapField()) {
                continue;
            }
            int n = f.isRepeated() ? (rnd.nextInt(8) == 0 ? 2000 : rnd.nextInt(4)) : 1;
            for (int i = 0; i < n; i++) {
                Object v = value(b, f, rnd, depth);
                if (v == null) {
                    break;
                }
                if (f.isRepeated()) {
                    b.addRepeatedField(f, v);
                } else {
                    b.setField(f, v);
                }
            }
        }
        return b.build();
    }

    static Object value(Message.Builder b, FieldDescriptor f, Random rnd, int depth) {
        switch (f.getJavaType()) {
            case INT: return (int) LONGS[rnd.nextInt(LONGS.length)];
            case LONG: return LONGS[rnd.nextInt(LONGS.length)];
            case DOUBLE: return DOUBLES[rnd.nextInt(DOUBLES.length)];
            case FLOAT: return (float) DOUBLES[rnd.nextInt(DOUBLES.length)];
            case BOOLEAN: return rnd.nextBoolean();
            case STRING:
                if (f.getName().equals("run_id") && rnd.nextInt(3) > 0) {
                    return RUNS.get(rnd.nextInt(RUNS.size()));
                }
                return STRINGS[rnd.nextInt(STRINGS.length)];
            case BYTE_STRING: {
                byte[] bytes = new byte[rnd.nextInt(4) == 0 ? 100_000 : rnd.nextInt(64)];
                rnd.nextBytes(bytes);
                return ByteString.copyFrom(bytes);
            }
            case ENUM: {
                var values = f.getEnumType().getValues();
                return values.get(rnd.nextInt(values.size()));
            }
            case MESSAGE:
                if (depth > 3) {
                    return null;
                }
                return hostile(b.newBuilderForField(f), rnd, depth + 1);
            default:
                return null;
        }
    }

    static byte[] payload(io.grpc.MethodDescriptor<?, ?> m, Random rnd) {
        int kind = rnd.nextInt(10);
        if (kind == 0) { // plain garbage
            byte[] b = new byte[rnd.nextInt(300)];
            rnd.nextBytes(b);
            return b;
        }
        Message prototype = (Message) ((MethodDescriptor.PrototypeMarshaller<?>) m.getRequestMarshaller()).getMessagePrototype();
        byte[] b = hostile(prototype.newBuilderForType(), rnd, 0).toByteArray();
        if (kind <= 3 && b.length > 0) { // mutated: flipped bytes, truncated
            b = b.clone();
            for (int i = 0; i < 1 + rnd.nextInt(4); i++) {
                b[rnd.nextInt(b.length)] ^= (byte) (1 + rnd.nextInt(255));
            }
            if (rnd.nextBoolean()) {
                b = java.util.Arrays.copyOf(b, rnd.nextInt(b.length + 1));
            }
        }
        return b;
    }

    // ------------------------------------------------------------------ tests

    // Prevents: a crash, an INTERNAL answer or a frozen call on malformed or hostile input to any RPC.
    @Test
    void everyRpc_tenThousandHostileRequests_noInternalNoHangSidecarHealthy() throws Exception {
        var methods = new ArrayList<io.grpc.MethodDescriptor<?, ?>>();
        for (var m : TrainGuardServiceGrpc.getServiceDescriptor().getMethods()) {
            methods.add(m);
        }
        Map<String, AtomicInteger> codes = new ConcurrentHashMap<>();
        List<String> internal = java.util.Collections.synchronizedList(new ArrayList<>());
        AtomicLong sent = new AtomicLong();
        ExecutorService pool = Executors.newFixedThreadPool(4);
        List<CompletableFuture<Void>> jobs = new ArrayList<>();
        for (int w = 0; w < 4; w++) {
            Random rnd = new Random(SEED + w);
            jobs.add(CompletableFuture.runAsync(() -> {
                for (int i = 0; i < GRPC_CALLS / 4; i++) {
                    var m = methods.get(rnd.nextInt(methods.size()));
                    if (m.getType() != io.grpc.MethodDescriptor.MethodType.UNARY) {
                        m = methods.get(0);
                    }
                    byte[] body = payload(m, rnd);
                    Status.Code code;
                    String desc = "";
                    try {
                        ClientCalls.blockingUnaryCall(channel, raw(m), CallOptions.DEFAULT.withDeadlineAfter(20, TimeUnit.SECONDS), body);
                        code = Status.Code.OK;
                    } catch (StatusRuntimeException e) {
                        code = e.getStatus().getCode();
                        desc = e.getStatus().getDescription();
                    }
                    sent.incrementAndGet();
                    codes.computeIfAbsent(m.getBareMethodName() + " " + code, k -> new AtomicInteger()).incrementAndGet();
                    // multi-MiB uploads near or past the 4 MiB limit: the transport may reset the stream
                    boolean oversized = body.length > (1 << 20);
                    if (oversized && code == Status.Code.INTERNAL && desc != null && desc.startsWith("RST_STREAM")) {
                        // the transport resets a stream still uploading past the message limit: the
                        // client sees the reset, not our status; counted, not a server failure
                        codes.computeIfAbsent("large-upload reset (" + (body.length >> 20) + " MiB)", k -> new AtomicInteger())
                                .incrementAndGet();
                    } else if (code == Status.Code.INTERNAL || code == Status.Code.UNKNOWN || code == Status.Code.DEADLINE_EXCEEDED
                            || code == Status.Code.UNAVAILABLE || (code == Status.Code.RESOURCE_EXHAUSTED
                            && (desc == null || desc.isBlank()))) {
                        internal.add(m.getBareMethodName() + " -> " + code + ": " + desc);
                    }
                }
            }, pool));
        }
        CompletableFuture.allOf(jobs.toArray(CompletableFuture[]::new)).get(10, TimeUnit.MINUTES);
        pool.shutdown();
        System.out.println("[fuzz] grpc unary calls=" + sent.get() + " outcomes=" + new TreeMap<>(codes));
        assertTrue(sent.get() >= GRPC_CALLS - 3);
        assertTrue(internal.isEmpty(), internal.size() + " bad answers, first: " + internal.subList(0, Math.min(10, internal.size())));
        assertHealthyAndServing();
    }

    // Prevents: StreamSteps freezing on one unparseable frame (no error, no verdicts, DEADLINE_EXCEEDED).
    @Test
    void streamSteps_garbageFrames_endWithInvalidArgumentNotAFreeze() throws Exception {
        var stream = raw(TrainGuardServiceGrpc.getStreamStepsMethod());
        Random rnd = new Random(SEED);
        Map<Status.Code, Integer> ends = new TreeMap<>();
        for (int i = 0; i < STREAMS; i++) {
            ClientCall<byte[], byte[]> call = channel.newCall(stream, CallOptions.DEFAULT.withDeadlineAfter(15, TimeUnit.SECONDS));
            CompletableFuture<Status> closed = new CompletableFuture<>();
            call.start(new ClientCall.Listener<>() {
                @Override
                public void onClose(Status status, Metadata trailers) {
                    closed.complete(status);
                }
            }, new Metadata());
            call.request(Integer.MAX_VALUE);
            byte[] garbage = new byte[1 + rnd.nextInt(200)];
            rnd.nextBytes(garbage);
            garbage[0] = (byte) 0x0a; // field 1, length-delimited: a truncated/garbled StreamStepsRequest
            call.sendMessage(garbage);
            call.halfClose();
            Status s = closed.get(20, TimeUnit.SECONDS);
            ends.merge(s.getCode(), 1, Integer::sum);
            assertNotEquals(Status.Code.DEADLINE_EXCEEDED, s.getCode(), "stream froze on a garbage frame");
        }
        System.out.println("[fuzz] StreamSteps garbage streams=" + STREAMS + " ends=" + ends);
        assertHealthyAndServing();
    }

    // Prevents: 500s, resets or hangs on hostile REST requests (bad JSON, null, huge numbers, odd paths).
    @Test
    void restEndpoints_hostileRequests_no5xx() throws Exception {
        Random rnd = new Random(SEED + 99);
        String[] bodies = {"", "null", "{}", "[]", "{\"clipThreshold\": 1e308}", "{\"clipThreshold\": \"Infinity\"}",
            "{\"clipThreshold\": -1}", "{\"hangMin\": \"PT-5S\"}", "{\"hangMax\": \"P9999999999D\"}", "{\"clipMode\": \"NOPE\"}",
            "{\"maxConsecutiveSkips\": 99999999999999}", "{", "\u0000\u0001", "[".repeat(5000), "{\"reason\": \"" + "x".repeat(10000) + "\"}",
            "{\"spikeEmaAlpha\": NaN}", "{\"recoverySteps\": 1.5}"};
        String[] paths = {"/api/runs", "/api/runs/%s", "/api/runs/%s/checkpoints", "/api/runs/%s/policy", "/api/runs/%s/resume",
            "/api/runs/%s?incidents=-1", "/api/runs/%s?incidents=999999999", "/api/runs/%s?incidents=abc", "/api/runs/..%%2f..%%2fetc",
            "/api/runs/%s/nope", "/q/../api/runs"};
        String[] methods = {"GET", "PUT", "POST", "DELETE", "PATCH"};
        String[] types = {"application/json", "text/plain", "application/x-www-form-urlencoded", null};
        Map<Integer, Integer> statuses = new TreeMap<>();
        List<String> bad = new ArrayList<>();
        for (int i = 0; i < REST_CALLS; i++) {
            String run = rnd.nextInt(4) == 0 ? "no-such-run" : RUNS.get(rnd.nextInt(RUNS.size()));
            String path = String.format(paths[rnd.nextInt(paths.length)], run);
            String method = methods[rnd.nextInt(methods.length)];
            String body = bodies[rnd.nextInt(bodies.length)];
            var req = HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + sidecar.port + path)).timeout(Duration.ofSeconds(20))
                    .method(method, method.equals("GET") ? HttpRequest.BodyPublishers.noBody() : HttpRequest.BodyPublishers.ofString(body));
            String type = types[rnd.nextInt(types.length)];
            if (type != null) {
                req.header("Content-Type", type);
            }
            if (rnd.nextInt(5) == 0) {
                req.header("Origin", "http://evil.example");
            }
            int status;
            try {
                status = HTTP.send(req.build(), HttpResponse.BodyHandlers.discarding()).statusCode();
            } catch (IOException e) {
                status = -1;
            }
            statuses.merge(status, 1, Integer::sum);
            if (status >= 500 || status < 0) {
                bad.add(method + " " + path + " [" + type + "] " + body.substring(0, Math.min(40, body.length())) + " -> " + status);
            }
        }
        System.out.println("[fuzz] REST calls=" + REST_CALLS + " statuses=" + statuses);
        assertTrue(bad.isEmpty(), bad.size() + " bad answers, first: " + bad.subList(0, Math.min(10, bad.size())));
        assertHealthyAndServing();
    }

    // Prevents: a 17 MB REST body answered with a connection reset instead of 413.
    @Test
    void restPolicy_seventeenMegabyteBody_413WithMessage() throws Exception {
        var r = HTTP.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + sidecar.port + "/api/runs/" + RUNS.get(0) + "/policy"))
                .timeout(Duration.ofSeconds(30)).header("Content-Type", "application/json")
                .PUT(HttpRequest.BodyPublishers.ofByteArray(new byte[17_000_000])).build(), HttpResponse.BodyHandlers.ofString());
        assertEquals(413, r.statusCode(), r.body());
        assertTrue(r.body().contains("max-body-size"), r.body());
        assertHealthyAndServing();
    }

    // Prevents: one 8 MB ReportStep costing seconds of event-loop CPU and ~600 MB of garbage.
    @Test
    void reportStep_eightMegabyteMessage_refusedEarlyWithResourceExhaustedAndDescription() throws Exception {
        byte[] junk = new byte[8 << 20];
        var report = StepReport.newBuilder().setRunId(RUNS.get(0)).setRank(0).setStep(1).setLoss(1).setGradNorm(1);
        // append an unknown length-delimited field 1000 carrying 8 MiB
        var extra = com.google.protobuf.UnknownFieldSet.newBuilder().addField(1000,
                com.google.protobuf.UnknownFieldSet.Field.newBuilder().addLengthDelimited(ByteString.copyFrom(junk)).build()).build();
        byte[] big = ReportStepRequest.newBuilder().setReport(report).setUnknownFields(extra).build().toByteArray();
        long t0 = System.nanoTime();
        var e = org.junit.jupiter.api.Assertions.assertThrows(StatusRuntimeException.class, () -> ClientCalls.blockingUnaryCall(
                channel, raw(TrainGuardServiceGrpc.getReportStepMethod()), CallOptions.DEFAULT.withDeadlineAfter(30, TimeUnit.SECONDS), big));
        long ms = (System.nanoTime() - t0) / 1_000_000;
        System.out.println("[fuzz] 8 MiB ReportStep -> " + e.getStatus() + " in " + ms + " ms");
        assertEquals(Status.Code.RESOURCE_EXHAUSTED, e.getStatus().getCode());
        assertFalse(e.getStatus().getDescription() == null || e.getStatus().getDescription().isBlank(), "empty description");
        assertHealthyAndServing();
    }

    // Prevents: calls on a CLOSED run succeeding, and refusals that name a symlink's target outside the roots.
    @Test
    void closedRunAndSymlinkRefusals_failedPreconditionAndNoTargetLeak() {
        String run = Sidecar.newRunId("closed");
        client.open(run, 0, 1);
        client.withDeadline().closeRun(CloseRunRequest.newBuilder().setRunId(run).build());
        var e = org.junit.jupiter.api.Assertions.assertThrows(StatusRuntimeException.class, () -> client.withDeadline()
                .heartbeat(HeartbeatRequest.newBuilder().setRunId(run).setPhase(Phase.PHASE_STEP).build()));
        assertEquals(Status.Code.FAILED_PRECONDITION, e.getStatus().getCode());
        String open = RUNS.get(0);
        e = org.junit.jupiter.api.Assertions.assertThrows(StatusRuntimeException.class, () -> client.withDeadline()
                .registerCheckpoint(RegisterCheckpointRequest.newBuilder().setRunId(open).setStep(5)
                        .addFiles(CheckpointFile.newBuilder().setPath(dir.resolve("ckpt/link.safetensors").toString())).build()));
        assertEquals(Status.Code.INVALID_ARGUMENT, e.getStatus().getCode());
        assertFalse(e.getStatus().getDescription().contains("outside-secret"), e.getStatus().getDescription());
    }

    private static void assertHealthyAndServing() {
        assertTrue(sidecar.alive(), "sidecar process died");
        assertEquals(200, sidecar.status("/q/health/live"));
        assertEquals(200, sidecar.status("/q/health/ready"));
        String run = Sidecar.newRunId("after");
        client.open(run, 0, 1);
        assertEquals(Action.ACTION_APPLY, client.report(run, 0, 0, 1.0, 0.5).getAction());
    }
}
