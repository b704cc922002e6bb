package io.trainguard.guard.model;

/** Parameter and optimizer-state dtypes the pre-flight audit reasons about. */
public enum DType {
    UNKNOWN(0, 0),
    FLOAT32(1.1754944e-38, 1.4e-45),
    FLOAT16(6.103515625e-05, 5.960464477539063e-08),
    BFLOAT16(1.1754944e-38, 9.2e-41),
    FLOAT64(Double.MIN_NORMAL, Double.MIN_VALUE),
    FLOAT8_E4M3(0.015625, 0.001953125),
    FLOAT8_E5M2(6.103515625e-05, 1.52587890625e-05),
    INT64(0, 0), INT32(0, 0), INT16(0, 0), INT8(0, 0), UINT8(0, 0), BOOL(0, 0);

    private final double smallestNormal;
    private final double smallestSubnormal;

    DType(double smallestNormal, double smallestSubnormal) {
        this.smallestNormal = smallestNormal;
        this.smallestSubnormal = smallestSubnormal;
    }

    public boolean isFloat() {
        return smallestNormal > 0;
    }

    public boolean isHalf() {
        return this == FLOAT16 || this == BFLOAT16;
    }

    public double smallestNormal() {
        return smallestNormal;
    }

    /** A positive value below half of this rounds to zero when stored in this dtype. */
    public double smallestSubnormal() {
        return smallestSubnormal;
    }
}
