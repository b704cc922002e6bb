package io.trainguard.guard;

/** The journal could not make a course-changing verdict durable; the verdict is withheld. */
public final class JournalUnavailableException extends GuardException {
    public JournalUnavailableException(String message, Throwable cause) {
        super(message);
        initCause(cause);
    }
}
