package io.trainguard.guard.detect;

import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.StepReport;
import java.util.List;

/**
 * A dynamic loss scaler's own overflow (torch's GradScaler, fp16 AMP): the loss is finite, every
 * watched forward output is finite, only the scaled gradients overflowed. The scaler skips that
 * update and halves its scale; a run that starts at 2^16 may do so several times in a row before
 * the scale settles. That is calibration, not an incident: such a step is skipped without counting
 * towards {@code max_consecutive_skips}. Once the scale has fallen below {@link #COLLAPSED} the
 * scaler is no longer calibrating but failing, and the step is an ordinary non-finite one.
 */
public final class LossScaleOverflow {
    /** Below this the loss scale has collapsed: gradients overflow even unscaled. */
    public static final double COLLAPSED = 1.0;

    private LossScaleOverflow() {
    }

    public static boolean of(StepReport r) {
        // cheap guard first: a healthy step's finite grad norm ends it; the full look is on overflows only.
        // Written as !(>=) so that a NaN loss scale is no scaler at all: its step stays a non-finite one.
        if (!(r.lossScale() >= COLLAPSED) || Double.isFinite(r.gradNorm())) {
            return false;
        }
        NonFiniteFinding bad = NonFiniteFinding.of(r, List.of());
        return bad != null && bad.kind() == IncidentKind.NON_FINITE_GRAD; // loss and watched outputs finite
    }

    /**
     * Why an overflow is not the scaler's calibration, or null: its loss is itself a spike, so the scaled
     * gradients overflowed for a reason. Such a step is judged like any non-finite one, its spike named
     * (before, a x1000 loss under fp16 AMP was filed as a neutral overflow, without an incident).
     */
    public static String spikeReason(StepReport r, SpikeDetector lossSpikes, double zThreshold) {
        if (r.lossAbsent() || !lossSpikes.isSpike(r.loss(), zThreshold) || !of(r)) {
            return null;
        }
        return lossSpikes.explain("loss", r.loss(), zThreshold)
                + ": the scaled gradients overflowed with it, which is no loss-scaler calibration";
    }

    public static String reason(StepReport r) {
        return String.format("loss-scaler overflow at scale %.6g: the scaler skipped this update and lowers its scale "
                + "(not counted as a non-finite incident while the scale is >= %.0f)", r.lossScale(), COLLAPSED);
    }
}
