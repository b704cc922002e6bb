package io.trainguard.guard;

import java.time.Duration;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * Journal writes someone waits for: each either commits within the durable timeout or fails with a
 * {@link JournalUnavailableException} that says the verdict was withheld and what to check.
 */
final class DurableWrites {
    private final Journal journal;
    private final Duration timeout;

    DurableWrites(Journal journal, Duration timeout) {
        this.journal = journal;
        this.timeout = timeout;
    }

    /** Writes and blocks until the commit (or the timeout). */
    void write(JournalWrite write) {
        await(journal.write(write));
    }

    /** Blocks until everything queued before now is committed: a read barrier. */
    void barrier() {
        write(new JournalWrite(null, java.util.List.of(), java.util.List.of()));
    }

    /** The same wait without blocking: completes with {@code value} once committed. */
    <T> CompletableFuture<T> then(CompletableFuture<Void> written, java.util.function.Supplier<T> value) {
        return written.orTimeout(timeout.toMillis(), TimeUnit.MILLISECONDS).handle((ok, failure) -> {
            if (failure != null) {
                throw new CompletionException(failure(failure));
            }
            return value.get();
        });
    }

    private void await(CompletableFuture<Void> written) {
        try {
            written.get(timeout.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw interrupted(e);
        } catch (ExecutionException | TimeoutException e) {
            throw failure(e instanceof ExecutionException ? e.getCause() : e);
        }
    }

    static JournalUnavailableException interrupted(InterruptedException e) {
        return new JournalUnavailableException("interrupted while journaling; the verdict was withheld, retry the call", e);
    }

    private JournalUnavailableException failure(Throwable cause) {
        while (cause instanceof CompletionException && cause.getCause() != null) {
            cause = cause.getCause();
        }
        String what = cause instanceof TimeoutException ? "timed out" : String.valueOf(cause.getMessage());
        return new JournalUnavailableException("the journal could not record this within " + timeout.toMillis()
                + " ms (" + what + "); the verdict was withheld: check the journal volume (disk full? read-only?) and retry",
                cause);
    }
}
