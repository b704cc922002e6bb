package io.trainguard.config;

import io.quarkus.runtime.StartupEvent;
import io.trainguard.checkpoint.CheckpointRegistry;
import io.trainguard.checkpoint.CheckpointVerifier;
import io.trainguard.checkpoint.JournaledCheckpointStore;
import io.trainguard.checkpoint.PathPolicy;
import io.trainguard.checkpoint.RegistryCatalog;
import io.trainguard.checkpoint.SqlConnections;
import io.trainguard.guard.CheckpointCatalog;
import io.trainguard.store.SqliteJournal;
import io.trainguard.tensor.inspect.DjlForensics;
import io.trainguard.tensor.inspect.DjlTensors;
import io.trainguard.tensor.inspect.TensorInspector;
import io.trainguard.tensor.scan.ScanOptions;
import io.trainguard.tensor.scan.TensorScanner;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.event.Observes;
import jakarta.enterprise.inject.Disposes;
import jakarta.enterprise.inject.Produces;
import jakarta.inject.Singleton;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.SQLException;
import java.time.Clock;
import java.util.List;
import org.jboss.logging.Logger;

/** Builds the checkpoint registry and tensor tools from configuration. DJL itself loads lazily. */
@ApplicationScoped
public class CheckpointWiring {
    private static final Logger LOG = Logger.getLogger(CheckpointWiring.class);

    @Produces
    @Singleton
    PathPolicy pathPolicy(TrainguardConfig config) {
        List<Path> existing = config.checkpoint().roots().stream().filter(root -> {
            boolean ok = Files.isDirectory(root);
            if (!ok) {
                LOG.warnf("checkpoint root %s does not exist: checkpoints under it will be refused "
                        + "(trainguard.checkpoint.roots)", root.toAbsolutePath());
            }
            return ok;
        }).toList();
        return new PathPolicy(existing);
    }

    /**
     * Compiles the vector scan kernels in the background right after start, so the first
     * checkpoint is verified at full speed (about a second of one core, once).
     */
    void warmUpScanKernels(@Observes StartupEvent started, TrainguardConfig config, TensorScanner scanner) {
        LOG.infof("checkpoint scan kernels: %s; reads: %s", TensorScanner.kernels(config.tensor().simd()),
                scanner.readMode().toString().toLowerCase(java.util.Locale.ROOT));
        Thread t = new Thread(() -> {
            long t0 = System.nanoTime();
            String what = scanner.warmUp(scanOptions(config));
            LOG.infof("checkpoint scan warm-up: %s in %d ms", what, (System.nanoTime() - t0) / 1_000_000);
        }, "trainguard-scan-warmup");
        t.setDaemon(true);
        t.setPriority(Thread.MIN_PRIORITY);
        t.start();
    }

    private static ScanOptions scanOptions(TrainguardConfig config) {
        var c = config.checkpoint();
        return new ScanOptions(c.checksum(), c.tensorStats(), config.tensor().simd());
    }

    @Produces
    @Singleton
    TensorScanner scanner(TrainguardConfig config) {
        try {
            return new TensorScanner(config.tensor().scanThreads(), config.tensor().scanChunkBytes(),
                    config.tensor().readMode());
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("trainguard.tensor.scan-threads="
                    + config.tensor().scanThreads() + ", trainguard.tensor.scan-chunk-bytes="
                    + config.tensor().scanChunkBytes() + ": " + e.getMessage(), e);
        }
    }

    void closeScanner(@Disposes TensorScanner scanner) {
        scanner.close();
    }

    @Produces
    @Singleton
    DjlTensors djl(TrainguardConfig config) {
        Path cache = config.tensor().djlCacheDir()
                .orElse(Path.of(System.getProperty("user.home"), ".cache", "trainguard", "djl"));
        return new DjlTensors(cache, config.tensor().djlMaxFileBytes());
    }

    @Produces
    @Singleton
    DjlForensics djlForensics(DjlTensors djl, TrainguardConfig config) {
        try {
            return new DjlForensics(djl, config.tensor().forensicsChunkElements());
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("trainguard.tensor.forensics-chunk-elements: " + e.getMessage(), e);
        }
    }

    @Produces
    @Singleton
    CheckpointVerifier verifier(TrainguardConfig config, TensorScanner scanner, DjlTensors djl, PathPolicy paths) {
        var c = config.checkpoint();
        return new CheckpointVerifier(scanner, djl, paths, c.verifyQueueCapacity(), scanOptions(config),
                c.progressLogInterval());
    }

    void closeVerifier(@Disposes CheckpointVerifier verifier) {
        verifier.close();
    }

    @Produces
    @Singleton
    CheckpointRegistry registry(TrainguardConfig config, SqliteJournal journal, CheckpointVerifier verifier, PathPolicy paths)
            throws SQLException {
        // Every write to the journal's file goes through its one writer thread (checkpoint rows
        // included, so a step and the promotion it caused commit together); this connection only reads.
        Connection connection = journal.openConnection();
        SqlConnections reads = new SqlConnections() {
            @Override
            public synchronized <T> T withConnection(SqlWork<T> work) throws SQLException {
                return work.run(connection);
            }
        };
        CheckpointRegistry registry = new CheckpointRegistry(
                new JournaledCheckpointStore(journal, reads, config.journal().durableTimeout()), verifier, paths,
                config.policy().knownGoodHealthySteps(), Clock.systemUTC());
        registry.resumePending();
        return registry;
    }

    @Produces
    @Singleton
    CheckpointCatalog catalog(CheckpointRegistry registry) {
        return new RegistryCatalog(registry);
    }

    @Produces
    @Singleton
    TensorInspector inspector(TrainguardConfig config) {
        return new TensorInspector(config.tensor().inspectMaxBytes(), config.tensor().inspectMaxTensors());
    }
}
