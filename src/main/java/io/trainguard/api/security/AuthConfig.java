package io.trainguard.api.security;

import io.smallrye.config.ConfigMapping;
import java.nio.file.Path;
import java.util.List;
import java.util.Optional;

/**
 * Who may change state over TCP (prefix {@code trainguard.auth}). Requests over the Unix socket are
 * trusted: its file permissions are the access control, as for any pod-local socket.
 */
@ConfigMapping(prefix = "trainguard.auth")
public interface AuthConfig {

    /**
     * A file holding the bearer token (env TRAINGUARD_AUTH_TOKEN_FILE; in Kubernetes the Secret
     * {@code trainguard-token}, key {@code token}, mounted at /var/run/secrets/trainguard/token). With a token,
     * every state-changing call over TCP needs {@code authorization: Bearer <token>}. Without one, the
     * sidecar refuses to listen on anything but loopback.
     */
    Optional<Path> tokenFile();

    /**
     * Browser origins (e.g. {@code https://dashboard.example}) allowed to send state-changing
     * requests; by default none: a write carrying any Origin header is refused (CSRF).
     */
    Optional<List<String>> allowedOrigins();
}
