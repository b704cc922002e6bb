package io.trainguard.checkpoint;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;

/**
 * Confines checkpoint paths to configured roots (trainguard.checkpoint.roots). A path is accepted
 * only if it is absolute, has no ".." segment, exists as a regular file, and its real path
 * (symlinks resolved) lies under the real path of a root: a symlink inside a root that points
 * outside is refused like the outside path itself.
 */
public final class PathPolicy {
    private final List<Path> roots;

    public PathPolicy(List<Path> roots) {
        List<Path> real = new ArrayList<>();
        for (Path r : roots) {
            try {
                real.add(r.toAbsolutePath().normalize().toRealPath());
            } catch (IOException e) {
                throw new IllegalArgumentException("checkpoint root " + r + " does not exist or is unreadable "
                        + "(trainguard.checkpoint.roots)", e);
            }
        }
        this.roots = List.copyOf(real);
    }

    public List<Path> roots() {
        return roots;
    }

    /** Returns the real path of {@code requested}, or throws with a message naming the roots. */
    public Path resolve(String requested) {
        return resolve(requested, false);
    }

    /** As {@link #resolve(String)}, also accepting a directory (a checkpoint saved as a folder). */
    public Path resolveFileOrDirectory(String requested) {
        return resolve(requested, true);
    }

    private Path resolve(String requested, boolean directoryAllowed) {
        if (roots.isEmpty()) {
            throw new PathRefusedException("no checkpoint roots are configured (trainguard.checkpoint.roots); "
                    + "the sidecar reads checkpoints only under configured directories");
        }
        Path p;
        try {
            p = Path.of(requested);
        } catch (java.nio.file.InvalidPathException e) {
            throw refused(requested, "it is not a valid path");
        }
        if (!p.isAbsolute()) {
            throw refused(requested, "it is relative; send an absolute path");
        }
        for (Path part : p) {
            if (part.toString().equals("..")) {
                throw refused(requested, "it contains '..'");
            }
        }
        Path real;
        try {
            real = p.normalize().toRealPath();
        } catch (IOException e) {
            throw refused(requested, "it does not exist or cannot be read (" + e.getClass().getSimpleName() + ")");
        }
        boolean inside = roots.stream().anyMatch(real::startsWith);
        if (!inside) {
            // the symlink's target is not named: the refusal must not map files outside the roots
            String why = real.equals(p.normalize()) ? "it is outside them"
                    : "it resolves through a symlink to a file outside them";
            throw refused(requested, why);
        }
        if (!Files.isRegularFile(real) && !(directoryAllowed && Files.isDirectory(real))) {
            throw refused(requested, "it is not a regular file");
        }
        return real;
    }

    private PathRefusedException refused(String requested, String why) {
        return new PathRefusedException("checkpoint path " + requested + " refused: " + why
                + "; checkpoints must be files under " + roots.stream().map(Path::toString)
                        .collect(Collectors.joining(", ", "[", "]")) + " (trainguard.checkpoint.roots)");
    }
}
