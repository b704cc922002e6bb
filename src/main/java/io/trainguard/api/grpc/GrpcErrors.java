package io.trainguard.api.grpc;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.trainguard.checkpoint.CheckpointNotFoundException;
import io.trainguard.checkpoint.PathRefusedException;
import io.trainguard.checkpoint.VerificationQueueFullException;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.JournalUnavailableException;
import io.trainguard.guard.PreconditionFailedException;
import io.trainguard.guard.RunNotFoundException;
import io.trainguard.tensor.inspect.TensorInputException;
import org.jboss.logging.Logger;

/** The one place where engine exceptions become gRPC statuses. */
public final class GrpcErrors {
    private static final Logger LOG = Logger.getLogger(GrpcErrors.class);

    private GrpcErrors() {
    }

    public static StatusRuntimeException toStatus(Throwable t) {
        if (t instanceof StatusRuntimeException s) {
            return s;
        }
        Status status;
        if (t instanceof InvalidRequestException) {
            status = Status.INVALID_ARGUMENT;
        } else if (t instanceof RunNotFoundException) {
            status = Status.NOT_FOUND;
        } else if (t instanceof PreconditionFailedException) {
            status = Status.FAILED_PRECONDITION;
        } else if (t instanceof JournalUnavailableException) {
            // The sidecar answered: its own UNAVAILABLE says so, where gRPC's (nothing listening) cannot
            return Status.UNAVAILABLE.withDescription(bounded(SIDECAR_ANSWERED + t.getMessage())).asRuntimeException();
        } else if (t instanceof PathRefusedException || t instanceof TensorInputException || t instanceof IllegalArgumentException) {
            status = Status.INVALID_ARGUMENT;
        } else if (t instanceof ArithmeticException) {
            // e.g. a Duration or a tensor shape whose arithmetic overflows 64 bits: bad input, not a bug
            return Status.INVALID_ARGUMENT.withDescription("a number in the request is out of range (" + t.getMessage()
                    + "): send durations, steps and shapes that fit 64-bit arithmetic").asRuntimeException();
        } else if (t instanceof VerificationQueueFullException) {
            status = Status.RESOURCE_EXHAUSTED;
        } else if (t instanceof CheckpointNotFoundException) {
            status = Status.NOT_FOUND;
        } else if (t instanceof io.trainguard.guard.GuardException) {
            status = Status.FAILED_PRECONDITION;
        } else {
            LOG.error("unexpected error while serving a trainguard call", t);
            return Status.INTERNAL.withDescription(bounded("internal error in the trainguard sidecar (" + t.getClass().getSimpleName()
                    + ": " + t.getMessage() + "); the sidecar keeps serving, see its log")).asRuntimeException();
        }
        return status.withDescription(bounded(t.getMessage())).asRuntimeException();
    }

    /**
     * Opens the description of an UNAVAILABLE the sidecar itself sends (its journal cannot record the
     * call), so that a client tells it from a connection failure: the Python client says "the sidecar
     * answered" instead of "nothing answered there".
     */
    public static final String SIDECAR_ANSWERED = "trainguard sidecar: ";

    /** Longest description sent: it travels in an HTTP/2 header, and clients refuse headers over 8 KiB. */
    static final int MAX_DESCRIPTION_CHARS = 2000;

    /**
     * Messages may quote request fields (a run id, a tensor name); a hostile 100 KB field must not
     * make the status itself unreadable (the client saw RST_STREAM PROTOCOL_ERROR instead of it).
     */
    static String bounded(String message) {
        if (message == null || message.length() <= MAX_DESCRIPTION_CHARS) {
            return message;
        }
        return message.substring(0, MAX_DESCRIPTION_CHARS) + "... (" + (message.length() - MAX_DESCRIPTION_CHARS)
                + " more characters)";
    }
}
