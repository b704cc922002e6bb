package io.trainguard.guard;

/**
 * Base of the engine's errors. Each subclass stands for one canonical gRPC / HTTP status, mapped in
 * exactly one place in the api package; the message must tell the caller what to change.
 */
public abstract class GuardException extends RuntimeException {
    protected GuardException(String message) {
        super(message);
    }
}
