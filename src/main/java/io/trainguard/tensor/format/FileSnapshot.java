package io.trainguard.tensor.format;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.Objects;

/** Identity of a file's content as the OS tells it: a change in any field means a writer touched it. */
public record FileSnapshot(long size, long modifiedNanos, Object fileKey) {
    public static FileSnapshot of(Path p) throws IOException {
        BasicFileAttributes a = Files.readAttributes(p, BasicFileAttributes.class);
        return new FileSnapshot(a.size(), a.lastModifiedTime().to(java.util.concurrent.TimeUnit.NANOSECONDS), a.fileKey());
    }

    /** Empty when unchanged, else what changed, for the rejection reason. */
    public String differenceTo(FileSnapshot later) {
        if (!Objects.equals(fileKey, later.fileKey)) {
            return "the file was replaced (inode " + fileKey + " -> " + later.fileKey + ")";
        }
        if (size != later.size) {
            return "its size changed from " + size + " to " + later.size + " bytes";
        }
        if (modifiedNanos != later.modifiedNanos) {
            return "its modification time changed";
        }
        return "";
    }
}
