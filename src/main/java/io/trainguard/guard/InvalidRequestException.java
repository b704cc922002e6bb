package io.trainguard.guard;

/** The request itself is malformed; retrying it unchanged will fail again. */
public final class InvalidRequestException extends GuardException {
    public InvalidRequestException(String message) {
        super(message);
    }
}
