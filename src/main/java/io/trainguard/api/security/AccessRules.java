package io.trainguard.api.security;

import java.net.URI;
import java.util.List;
import java.util.Locale;
import java.util.Optional;
import java.util.Set;

/**
 * Decides whether one HTTP request (REST or gRPC, both share the port) may proceed. Plain Java, no
 * framework types: the Vert.x filter only translates. The rules, in order:
 * <ol>
 * <li>the Unix socket is trusted (its file permissions are the access control);</li>
 * <li>without a token the listener is loopback-only, so the Host header must name loopback: a page
 * that re-points its own DNS name to 127.0.0.1 (DNS rebinding) is refused;</li>
 * <li>a state-changing request carrying a browser Origin not explicitly allowed is refused (CSRF);</li>
 * <li>REST writes must be {@code application/json}: no "simple request" a form or a no-cors fetch
 * can send without a CORS pre-flight, which this server never grants;</li>
 * <li>with a token configured, every state-changing request needs {@code Bearer <token>}.</li>
 * </ol>
 */
public final class AccessRules {

    public record Request(boolean unixSocket, String method, String path, String contentType, String host,
                          String origin, String authorization) {
    }

    /** Why a request was refused: an HTTP status, the matching gRPC code, and what to do. */
    public record Refusal(int httpStatus, int grpcCode, String message) {
    }

    private static final int GRPC_PERMISSION_DENIED = 7;
    private static final int GRPC_UNAUTHENTICATED = 16;
    private static final int GRPC_INVALID_ARGUMENT = 3;
    /** gRPC methods that only read; every other one changes state (trainer calls included). */
    private static final Set<String> GRPC_READS = Set.of("/trainguard.v1.TrainGuardService/GetRun",
            "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch");
    private static final Set<String> LOOPBACK_HOSTS = Set.of("localhost", "127.0.0.1", "::1", "[::1]");

    private final Optional<AccessToken> token;
    private final List<String> allowedOrigins;

    public AccessRules(Optional<AccessToken> token, List<String> allowedOrigins) {
        this.token = token;
        this.allowedOrigins = allowedOrigins.stream().map(o -> o.toLowerCase(Locale.ROOT)).toList();
    }

    public boolean tokenConfigured() {
        return token.isPresent();
    }

    public static boolean isGrpc(String contentType) {
        return contentType != null && contentType.toLowerCase(Locale.ROOT).startsWith("application/grpc");
    }

    public static boolean isLoopbackHost(String host) {
        return host != null && (LOOPBACK_HOSTS.contains(host.toLowerCase(Locale.ROOT)) || host.startsWith("127."));
    }

    public Optional<Refusal> check(Request r) {
        if (r.unixSocket()) {
            return Optional.empty();
        }
        boolean grpc = isGrpc(r.contentType());
        boolean write = grpc ? !GRPC_READS.contains(r.path()) : isWriteMethod(r.method());
        if (token.isEmpty() && !grpc && !isLoopbackHost(hostPart(r.host()))) {
            return refuse(403, GRPC_PERMISSION_DENIED, "Host '" + r.host() + "' is not loopback: without a token "
                    + "(trainguard.auth.token-file) the sidecar serves only localhost; use http://127.0.0.1:<port>");
        }
        if (!write) {
            return Optional.empty();
        }
        if (r.origin() != null && !allowedOrigins.contains(r.origin().toLowerCase(Locale.ROOT))) {
            return refuse(403, GRPC_PERMISSION_DENIED, "cross-origin write from '" + r.origin() + "' refused: "
                    + "browsers may not change trainguard state (list trusted origins in trainguard.auth.allowed-origins)");
        }
        if (!grpc && !isJson(r.contentType())) {
            return refuse(415, GRPC_INVALID_ARGUMENT, r.method() + " " + r.path() + " needs Content-Type: "
                    + "application/json (send a JSON body, `{}` when there is nothing to say)");
        }
        if (token.isPresent() && !token.get().acceptsHeader(r.authorization())) {
            return refuse(401, GRPC_UNAUTHENTICATED, (r.authorization() == null ? "no credentials" : "wrong token")
                    + ": state-changing calls over TCP need the header `authorization: Bearer <token>` with the token "
                    + "from trainguard.auth.token-file (or use the Unix socket)");
        }
        return Optional.empty();
    }

    private static Optional<Refusal> refuse(int http, int grpc, String message) {
        return Optional.of(new Refusal(http, grpc, message));
    }

    private static boolean isWriteMethod(String method) {
        return !("GET".equals(method) || "HEAD".equals(method) || "OPTIONS".equals(method));
    }

    private static boolean isJson(String contentType) {
        return contentType != null && contentType.toLowerCase(Locale.ROOT).strip().startsWith("application/json");
    }

    /** "example.com:7474" -> "example.com"; "[::1]:7474" -> "[::1]"; null stays null. */
    static String hostPart(String host) {
        if (host == null) {
            return null;
        }
        try {
            URI u = URI.create("http://" + host.strip());
            return u.getHost() == null ? host : u.getHost();
        } catch (IllegalArgumentException e) {
            return host;
        }
    }
}
