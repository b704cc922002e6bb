package io.trainguard.guard.detect;

import io.trainguard.guard.model.StepReport;

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
        if (!of(r.lossScale(), r.lossAbsent() ? 0 : r.loss(), r.gradNorm())) {
            return false;
        }
        for (boolean finite : r.moduleFinite()) {
            if (!finite) {
                return false;
            }
        }
        for (double v : r.moduleMaxAbs()) {
            if (!Double.isFinite(v)) {
                return false;
            }
        }
        return true;
    }

    /** The same from the numbers a journaled step keeps (no module statistics: loss and grads tell). */
    public static boolean of(double lossScale, double loss, double gradNorm) {
        return lossScale >= COLLAPSED && Double.isFinite(loss) && !Double.isFinite(gradNorm);
    }

    public static String reason(StepReport r) {
        return String.format("loss-scaler overflow at scale %.6g: the scaler skipped this update and lowers its scale "
                + "(not counted as a non-finite incident while the scale is >= %.0f)", r.lossScale(), COLLAPSED);
    }
}
