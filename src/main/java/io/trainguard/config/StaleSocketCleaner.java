package io.trainguard.config;

import io.quarkus.runtime.Startup;
import jakarta.annotation.PostConstruct;
import jakarta.enterprise.context.ApplicationScoped;
import java.io.IOException;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import org.jboss.logging.Logger;

/**
 * A sidecar killed with -9 leaves its Unix socket file behind and the restarted one could not
 * bind. Before the HTTP server starts, remove the file if nobody answers on it; a live socket is
 * left alone (a second sidecar must fail loudly rather than steal it).
 */
@Startup(10)
@ApplicationScoped
public class StaleSocketCleaner {
    private static final Logger LOG = Logger.getLogger(StaleSocketCleaner.class);
    private final TrainguardConfig config;

    public StaleSocketCleaner(TrainguardConfig config) {
        this.config = config;
    }

    @PostConstruct
    void clean() {
        if (!config.listen().socketEnabled()) {
            return;
        }
        Path socket = Path.of(config.listen().socket());
        if (!Files.exists(socket)) {
            try {
                Files.createDirectories(socket.toAbsolutePath().getParent());
            } catch (IOException e) {
                LOG.warnf("cannot create the socket directory %s: %s", socket.getParent(), e.getMessage());
            }
            return;
        }
        try (SocketChannel probe = SocketChannel.open(StandardProtocolFamily.UNIX)) {
            probe.connect(UnixDomainSocketAddress.of(socket));
            LOG.warnf("%s is in use by another process; not removing it", socket);
        } catch (IOException refused) {
            try {
                Files.deleteIfExists(socket);
                LOG.infof("removed stale socket %s left by an earlier sidecar", socket);
            } catch (IOException e) {
                LOG.warnf("cannot remove stale socket %s: %s", socket, e.getMessage());
            }
        }
    }
}
