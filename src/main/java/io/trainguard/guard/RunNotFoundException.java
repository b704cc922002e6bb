package io.trainguard.guard;

public final class RunNotFoundException extends GuardException {
    public RunNotFoundException(String runId) {
        super("run '" + runId + "' is not known to this sidecar: call OpenRun for it first (check the run id and that the trainer points at the right sidecar)");
    }
}
