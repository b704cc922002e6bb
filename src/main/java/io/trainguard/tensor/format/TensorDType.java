package io.trainguard.tensor.format;

import java.util.Arrays;
import java.util.Optional;
import java.util.stream.Collectors;

/** The element types a checkpoint tensor may have, named as in the safetensors header. */
public enum TensorDType {
    F64(8, true), F32(4, true), F16(2, true), BF16(2, true),
    F8_E4M3(1, true), F8_E5M2(1, true),
    I64(8, false), I32(4, false), I16(2, false), I8(1, false), U8(1, false), BOOL(1, false);

    private final int byteSize;
    private final boolean floating;

    TensorDType(int byteSize, boolean floating) {
        this.byteSize = byteSize;
        this.floating = floating;
    }

    public int byteSize() {
        return byteSize;
    }

    /** Only floating types can hold NaN or Inf; integer tensors are finite by construction. */
    public boolean isFloating() {
        return floating;
    }

    public static Optional<TensorDType> fromSafetensors(String name) {
        for (TensorDType t : values()) {
            if (t.name().equals(name)) {
                return Optional.of(t);
            }
        }
        return Optional.empty();
    }

    /** numpy dtype.str without the byte-order mark, for the DJL/numpy paths. */
    public static String supportedNames() {
        return Arrays.stream(values()).map(Enum::name).collect(Collectors.joining(", "));
    }
}
