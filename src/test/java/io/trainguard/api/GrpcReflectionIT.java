package io.trainguard.api;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.reflection.v1.ServerReflectionGrpc;
import io.grpc.reflection.v1.ServerReflectionRequest;
import io.grpc.reflection.v1.ServerReflectionResponse;
import io.grpc.reflection.v1.ServiceResponse;
import io.grpc.stub.StreamObserver;
import io.trainguard.PackagedSidecar;
import io.trainguard.api.grpc.v1.TrainGuardServiceGrpc;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The gRPC reflection switch (trainguard.listen.grpc-reflection) on the packaged jar, over real
 * gRPC with the standard grpc.reflection.v1 client stub (what grpcurl/Postman speak).
 */
class GrpcReflectionIT {

    /** ListServices over the reflection stream; completes with the service names or the call's error. */
    private static List<String> listServices(Sidecar client) throws Exception {
        CompletableFuture<List<String>> names = new CompletableFuture<>();
        StreamObserver<ServerReflectionRequest> requests = ServerReflectionGrpc.newStub(client.channel)
                .withDeadlineAfter(30, TimeUnit.SECONDS)
                .serverReflectionInfo(new StreamObserver<>() {
                    @Override
                    public void onNext(ServerReflectionResponse r) {
                        names.complete(r.getListServicesResponse().getServiceList().stream().map(ServiceResponse::getName).toList());
                    }

                    @Override
                    public void onError(Throwable t) {
                        names.completeExceptionally(t);
                    }

                    @Override
                    public void onCompleted() {
                        names.completeExceptionally(new IllegalStateException("reflection stream ended without an answer"));
                    }
                });
        requests.onNext(ServerReflectionRequest.newBuilder().setListServices("").build());
        try {
            return names.get(40, TimeUnit.SECONDS);
        } finally {
            requests.onCompleted();
        }
    }

    @Test
    void reflection_switchedOn_listsTheTrainguardService(@TempDir Path dir) throws Exception {
        // prevents: a documented switch that does nothing (the setting is read at build time, or misspelled)
        try (PackagedSidecar app = new PackagedSidecar(dir).with("trainguard.listen.grpc-reflection", "true").start();
                Sidecar client = new Sidecar(app.port)) {
            List<String> services = listServices(client);
            assertTrue(services.contains(TrainGuardServiceGrpc.SERVICE_NAME), "reflection listed " + services);
        }
    }

    @Test
    void reflection_byDefault_isUnimplementedWhileTheServiceServes(@TempDir Path dir) throws Exception {
        // prevents: reflection on by default, listing every rpc to anyone who can connect
        try (PackagedSidecar app = new PackagedSidecar(dir).start(); Sidecar client = new Sidecar(app.port)) {
            ExecutionException e = org.junit.jupiter.api.Assertions.assertThrows(ExecutionException.class, () -> listServices(client));
            assertTrue(e.getCause() instanceof StatusRuntimeException, "not a gRPC status: " + e.getCause());
            assertEquals(Status.Code.UNIMPLEMENTED, ((StatusRuntimeException) e.getCause()).getStatus().getCode());
            // the same channel reaches trainguard itself: the refusal is the switch, not a dead server
            client.open(Sidecar.newRunId("reflection-off"), 0, 1);
        }
    }
}
