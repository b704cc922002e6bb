package io.trainguard.guard;

/** The request is well-formed but the run is in a state that does not allow it. */
public final class PreconditionFailedException extends GuardException {
    public PreconditionFailedException(String message) {
        super(message);
    }
}
