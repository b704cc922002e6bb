package io.trainguard.api.grpc;

import com.google.protobuf.Message;
import io.grpc.ForwardingServerCallListener;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.ServerCallHandler;
import io.grpc.Status;
import io.grpc.ServerMethodDefinition;
import io.grpc.ServerServiceDefinition;
import io.grpc.ServiceDescriptor;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Turns a request frame that does not parse into a marker message the service can answer, instead
 * of an exception inside the transport: on the shared Vert.x server such an exception left a
 * StreamSteps call open with no error and no later verdicts until the client's deadline.
 */
final class GarbledFrames {
    /**
     * One marker instance per request type, recognised by identity. Looked up by class on every
     * request, so it must stay cheap: a lock-free map read and a reference compare (a map keyed by
     * the message itself hashed every request deeply under a global lock, and took an empty but
     * valid request for the marker, which equals it).
     */
    private static final Map<Class<?>, Object> MARKERS = new ConcurrentHashMap<>();

    private GarbledFrames() {
    }

    static boolean isGarbled(Object request) {
        return request != null && MARKERS.get(request.getClass()) == request;
    }

    /** The same service with every request marshaller made tolerant of unparseable frames. */
    static ServerServiceDefinition tolerant(ServerServiceDefinition original) {
        ServiceDescriptor sd = original.getServiceDescriptor();
        ServiceDescriptor.Builder descriptor = ServiceDescriptor.newBuilder(sd.getName()).setSchemaDescriptor(sd.getSchemaDescriptor());
        List<ServerMethodDefinition<?, ?>> methods = new ArrayList<>();
        for (ServerMethodDefinition<?, ?> m : original.getMethods()) {
            methods.add(wrap(m));
        }
        methods.forEach(m -> descriptor.addMethod(m.getMethodDescriptor()));
        ServerServiceDefinition.Builder b = ServerServiceDefinition.builder(descriptor.build());
        methods.forEach(b::addMethod);
        return b.build();
    }

    @SuppressWarnings("unchecked")
    private static <Q, R> ServerMethodDefinition<Q, R> wrap(ServerMethodDefinition<Q, R> m) {
        MethodDescriptor<Q, R> md = m.getMethodDescriptor();
        if (!(md.getRequestMarshaller() instanceof MethodDescriptor.PrototypeMarshaller<?> proto)
                || !(proto.getMessagePrototype() instanceof Message prototype)) {
            return m;
        }
        // a fresh instance, not the default one a client's empty request may parse to
        Q marker = (Q) MARKERS.computeIfAbsent(prototype.getClass(), type -> prototype.newBuilderForType().build());
        MethodDescriptor.PrototypeMarshaller<Q> delegate = (MethodDescriptor.PrototypeMarshaller<Q>) proto;
        MethodDescriptor.PrototypeMarshaller<Q> tolerant = new MethodDescriptor.PrototypeMarshaller<>() {
            @Override
            public Q getMessagePrototype() {
                return delegate.getMessagePrototype();
            }

            @Override
            public Class<Q> getMessageClass() {
                return delegate.getMessageClass();
            }

            @Override
            public InputStream stream(Q value) {
                return delegate.stream(value);
            }

            @Override
            public Q parse(InputStream stream) {
                try {
                    return delegate.parse(stream);
                } catch (RuntimeException e) {
                    return marker;
                }
            }
        };
        ServerCallHandler<Q, R> handler = m.getServerCallHandler();
        if (md.getType() == MethodDescriptor.MethodType.UNARY) {
            // a unary call with a garbled request is answered here; streams answer it themselves
            handler = (call, headers) -> new ForwardingServerCallListener.SimpleForwardingServerCallListener<>(
                    m.getServerCallHandler().startCall(call, headers)) {
                private boolean garbled;

                @Override
                public void onMessage(Q message) {
                    if (isGarbled(message)) {
                        garbled = true;
                        call.close(Status.INVALID_ARGUMENT.withDescription(message(md.getBareMethodName())), new Metadata());
                    } else {
                        super.onMessage(message);
                    }
                }

                @Override
                public void onHalfClose() {
                    if (!garbled) {
                        super.onHalfClose();
                    }
                }
            };
        }
        return ServerMethodDefinition.create(md.toBuilder().setRequestMarshaller(tolerant).build(), handler);
    }

    static String message(String method) {
        return "a " + method + " request frame is not a valid protobuf message of the expected type: fix the "
                + "client's serialization (same trainguard.v1 proto on both sides?)";
    }
}
