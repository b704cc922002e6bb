package io.trainguard.tensor.scan;

/** Called from the scanning coordinator each time a chunk of a file is done. */
@FunctionalInterface
public interface ScanProgress {
    ScanProgress NONE = (done, total) -> { };

    void onProgress(long bytesDone, long bytesTotal);
}
