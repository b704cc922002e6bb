package io.trainguard.api.rest;

import io.trainguard.checkpoint.CheckpointNotFoundException;
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
        return error(status, e);
    }

    /**
     * The checkpoint exceptions are not GuardExceptions (the registry is no part of the decision
     * engine), and one class maps one exception type: their mappers sit here so the statuses stay in
     * one place.
     */
    @Provider
    public static class CheckpointNotFound implements ExceptionMapper<CheckpointNotFoundException> {
        @Override
        public Response toResponse(CheckpointNotFoundException e) {
            return error(404, e);
        }
    }

    private static Response error(int status, RuntimeException e) {
        return Response.status(status).type(MediaType.APPLICATION_JSON)
                .entity(new ErrorBody(e.getClass().getSimpleName().replace("Exception", ""), e.getMessage())).build();
    }
}
