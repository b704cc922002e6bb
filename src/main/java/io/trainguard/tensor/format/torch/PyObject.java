package io.trainguard.tensor.format.torch;

import java.util.Arrays;

/**
 * A Python object of an allow-listed data class (a DCP metadata dataclass, torch.Size, a
 * torch.device...), kept as its class name, constructor arguments and pickled state: nothing of
 * it is ever run.
 */
public final class PyObject {
    private final String type;
    private final Object[] args;
    private Object state;

    PyObject(String type, Object[] args) {
        this.type = type;
        this.args = args;
    }

    public String type() {
        return type;
    }

    public Object[] args() {
        return args;
    }

    /** The pickled state (usually a dict of attributes), or null. */
    public Object state() {
        return state;
    }

    void setState(Object s) {
        state = s;
    }

    /** An attribute from the pickled state dict (dataclasses pickle their fields there). */
    public Object attr(String name) {
        if (state instanceof java.util.Map<?, ?> m) {
            return m.get(name);
        }
        if (state instanceof Object[] t && t.length == 2 && t[1] instanceof java.util.Map<?, ?> slots) {
            return slots.get(name); // (dict, slots) state of a class with __slots__
        }
        return null;
    }

    @Override
    public String toString() {
        return type + Arrays.deepToString(args) + (state == null ? "" : " " + state);
    }
}
