package io.trainguard.api.rest;

import io.trainguard.guard.GuardException;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.JournalUnavailableException;
import io.trainguard.guard.RunNotFoundException;
import jakarta.ws.rs.core.MediaType;
import jakarta.ws.rs.core.Response;
import jakarta.ws.rs.ext.ExceptionMapper;
import jakarta.ws.rs.ext.Provider;

/** The REST counterpart of GrpcErrors: the same exceptions, the matching HTTP statuses. */
@Provider
public class GuardExceptionMapper implements ExceptionMapper<GuardException> {

    public record ErrorBody(String error, String message) {
    }

    @Override
    public Response toResponse(GuardException e) {
        int status;
        if (e instanceof InvalidRequestException) {
            status = 400;
        } else if (e instanceof RunNotFoundException) {
            status = 404;
        } else if (e instanceof JournalUnavailableException) {
            status = 503;
        } else {
            status = 409;
        }
        return Response.status(status).type(MediaType.APPLICATION_JSON)
                .entity(new ErrorBody(e.getClass().getSimpleName().replace("Exception", ""), e.getMessage())).build();
    }
}
