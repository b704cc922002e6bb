package io.trainguard.guard.model;

import java.util.List;

/** What the client found when it compared the model before and after validation. */
public record ValidationAudit(
        boolean parametersChanged,
        boolean dtypeDeviceModeChanged,
        boolean wiringChanged,
        boolean rngChanged,
        List<String> details,
        boolean restored) {

    public boolean anyChange() {
        return parametersChanged || dtypeDeviceModeChanged || wiringChanged || rngChanged;
    }
}
