package io.trainguard.api.security;

import io.quarkus.runtime.StartupEvent;
import io.quarkus.vertx.http.runtime.filters.Filters;
import io.trainguard.config.TrainguardConfig;
import io.vertx.core.http.HttpHeaders;
import io.vertx.core.http.HttpServerRequest;
import io.vertx.core.net.SocketAddress;
import io.vertx.core.json.JsonObject;
import io.vertx.ext.web.RoutingContext;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.event.Observes;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Optional;
import org.jboss.logging.Logger;

/**
 * Applies {@link AccessRules} to every request of the main HTTP server, before REST or gRPC see it
 * (gRPC shares the server, so one filter covers both). Refusals are JSON for REST and a
 * trailers-only gRPC status for gRPC. Also refuses to start a TCP listener that is not loopback
 * when no token is configured.
 */
@ApplicationScoped
public class AccessFilter {
    private static final Logger LOG = Logger.getLogger(AccessFilter.class);
    /** Runs before every Quarkus route, gRPC included. */
    private static final int PRIORITY = 10_000;

    /** Bodies above the limit but below this are read and discarded so the client sees the 413. */
    private static final long DRAIN_LIMIT = 64L << 20;

    private final AccessRules rules;
    private final String listenHost;
    private final long maxBodyBytes;

    public AccessFilter(AuthConfig auth, TrainguardConfig config,
            @org.eclipse.microprofile.config.inject.ConfigProperty(name = "quarkus.http.limits.max-body-size")
            io.quarkus.runtime.configuration.MemorySize maxBody) {
        this.maxBodyBytes = maxBody.asLongValue();
        Optional<AccessToken> token = auth.tokenFile().map(AccessToken::fromFile);
        this.rules = new AccessRules(token, auth.allowedOrigins().orElse(List.of()));
        this.listenHost = config.listen().host();
    }

    void register(@Observes Filters filters) {
        filters.register(this::handle, PRIORITY);
    }

    /** Exposure by design: no token means loopback only, whatever the manifest says. */
    void checkExposure(@Observes StartupEvent started) {
        if (!rules.tokenConfigured() && !AccessRules.isLoopbackHost(listenHost)) {
            throw new IllegalStateException("trainguard.listen.host=" + listenHost + " is not loopback and no token "
                    + "is configured: anyone who can reach the port could change runs. Set trainguard.auth.token-file "
                    + "(env TRAINGUARD_AUTH_TOKEN_FILE) to a file holding a token, or listen on 127.0.0.1");
        }
        LOG.infof("access: %s; Unix socket trusted", rules.tokenConfigured()
                ? "state-changing calls over TCP need the bearer token" : "no token: TCP on loopback only");
    }

    private void handle(RoutingContext rc) {
        HttpServerRequest req = rc.request();
        if (tooLarge(req)) {
            return;
        }
        var decision = rules.check(new AccessRules.Request(isUnixSocket(req), req.method().name(), req.path(),
                req.getHeader(HttpHeaders.CONTENT_TYPE), host(req),
                req.getHeader(HttpHeaders.ORIGIN), req.getHeader(HttpHeaders.AUTHORIZATION)));
        if (decision.isEmpty()) {
            if (AccessRules.isGrpc(req.getHeader(HttpHeaders.CONTENT_TYPE))) {
                rc.addHeadersEndHandler(v -> describeResourceExhausted(rc.response().headers()));
            }
            rc.next();
            return;
        }
        AccessRules.Refusal refusal = decision.get();
        var resp = rc.response();
        if (AccessRules.isGrpc(req.getHeader(HttpHeaders.CONTENT_TYPE))) {
            // trailers-only gRPC response: the client sees the status code and this message
            resp.setStatusCode(200).putHeader(HttpHeaders.CONTENT_TYPE, "application/grpc")
                    .putHeader("grpc-status", Integer.toString(refusal.grpcCode()))
                    .putHeader("grpc-message", URLEncoder.encode(refusal.message(), StandardCharsets.UTF_8)
                            .replace("+", "%20"))
                    .end();
        } else {
            resp.setStatusCode(refusal.httpStatus()).putHeader(HttpHeaders.CONTENT_TYPE, "application/json")
                    .end(new JsonObject().put("error", "AccessRefused").put("message", refusal.message()).encode());
        }
    }

    /**
     * A REST body over quarkus.http.limits.max-body-size gets a 413 the client can read: the body is
     * drained (up to DRAIN_LIMIT) before answering, instead of a connection reset mid-upload.
     */
    private boolean tooLarge(HttpServerRequest req) {
        String length = req.getHeader(HttpHeaders.CONTENT_LENGTH);
        if (length == null || AccessRules.isGrpc(req.getHeader(HttpHeaders.CONTENT_TYPE))) {
            return false;
        }
        long n;
        try {
            n = Long.parseLong(length.strip());
        } catch (NumberFormatException e) {
            return false;
        }
        if (n <= maxBodyBytes) {
            return false;
        }
        String body = new JsonObject().put("error", "PayloadTooLarge").put("message", "request body of " + n
                + " bytes is over the " + maxBodyBytes + "-byte limit (quarkus.http.limits.max-body-size); "
                + "trainguard's REST bodies are small JSON objects").encode();
        var resp = req.response().setStatusCode(413).putHeader(HttpHeaders.CONTENT_TYPE, "application/json")
                .putHeader(HttpHeaders.CONNECTION, "close");
        if (n > DRAIN_LIMIT) {
            resp.end(body);
        } else {
            req.handler(ignored -> { }).endHandler(v -> resp.end(body));
        }
        return true;
    }

    /**
     * The transport refuses an oversized gRPC message with RESOURCE_EXHAUSTED and no description;
     * say what the limit is and what to do.
     */
    private static void describeResourceExhausted(io.vertx.core.MultiMap headers) {
        if ("8".equals(headers.get("grpc-status")) && headers.get("grpc-message") == null) {
            headers.set("grpc-message", URLEncoder.encode("request message larger than the sidecar accepts "
                    + "(trainguard.limits.max-message-bytes): step reports are a few KiB; send fewer or smaller "
                    + "tensors to InspectTensors", StandardCharsets.UTF_8).replace("+", "%20"));
        }
    }

    /** HTTP/1.1 Host or HTTP/2 :authority (Vert.x has no Host header on HTTP/2 requests). */
    private static String host(HttpServerRequest req) {
        var authority = req.authority();
        return authority != null ? authority.host() : req.getHeader(HttpHeaders.HOST);
    }

    private static boolean isUnixSocket(HttpServerRequest req) {
        SocketAddress local = req.localAddress();
        SocketAddress remote = req.remoteAddress();
        return (local != null && local.isDomainSocket()) || (remote != null && remote.isDomainSocket());
    }
}
