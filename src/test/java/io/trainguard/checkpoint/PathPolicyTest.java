package io.trainguard.checkpoint;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class PathPolicyTest {
    @TempDir
    Path tmp;

    @Test
    void resolve_fileUnderRoot_accepted() throws Exception {
        // prevents: refusing legitimate checkpoints
        Path root = Files.createDirectories(tmp.resolve("ckpt"));
        Path f = Files.write(root.resolve("a.safetensors"), new byte[1]);
        assertEquals(f.toRealPath(), new PathPolicy(List.of(root)).resolve(f.toString()));
    }

    @Test
    void resolve_outsideRoots_refusedNamingRoots() throws Exception {
        // prevents: the sidecar reading arbitrary files (e.g. /etc/shadow) for a client
        Path root = Files.createDirectories(tmp.resolve("ckpt"));
        Path f = Files.write(tmp.resolve("secret"), new byte[1]);
        PathRefusedException e = assertThrows(PathRefusedException.class,
                () -> new PathPolicy(List.of(root)).resolve(f.toString()));
        assertTrue(e.getMessage().contains(root.toRealPath().toString()) && e.getMessage().contains("outside"),
                e.getMessage());
    }

    @Test
    void resolve_dotDot_refused() throws Exception {
        // prevents: escaping a root with ../ even when the target exists
        Path root = Files.createDirectories(tmp.resolve("ckpt"));
        Files.write(tmp.resolve("secret"), new byte[1]);
        PathRefusedException e = assertThrows(PathRefusedException.class,
                () -> new PathPolicy(List.of(root)).resolve(root + "/../secret"));
        assertTrue(e.getMessage().contains("'..'"), e.getMessage());
    }

    @Test
    void resolve_symlinkEscapingRoot_refused() throws Exception {
        // prevents: a symlink inside a root pointing outside it
        Path root = Files.createDirectories(tmp.resolve("ckpt"));
        Path secret = Files.write(tmp.resolve("secret"), new byte[1]);
        Path link = Files.createSymbolicLink(root.resolve("model.safetensors"), secret);
        PathRefusedException e = assertThrows(PathRefusedException.class,
                () -> new PathPolicy(List.of(root)).resolve(link.toString()));
        assertTrue(e.getMessage().contains("symlink"), e.getMessage());
    }

    @Test
    void resolve_relativePath_refused() {
        // prevents: paths resolved against the sidecar's working directory
        Path root = tmp;
        assertThrows(PathRefusedException.class, () -> new PathPolicy(List.of(root)).resolve("a.safetensors"));
    }
}
