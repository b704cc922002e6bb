package io.trainguard.tensor;

import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.nio.ByteBuffer;

/**
 * Releases a mapping as soon as a chunk is scanned, so resident memory stays at
 * (threads x chunk size) instead of growing with the file until the GC finds the buffers.
 * Falls back to the GC where sun.misc.Unsafe is not reachable.
 */
final class Unmapper {
    private static final Object UNSAFE;
    private static final Method INVOKE_CLEANER;

    static {
        Object u = null;
        Method m = null;
        try {
            Class<?> c = Class.forName("sun.misc.Unsafe");
            Field f = c.getDeclaredField("theUnsafe");
            f.setAccessible(true);
            u = f.get(null);
            m = c.getMethod("invokeCleaner", ByteBuffer.class);
        } catch (ReflectiveOperationException | RuntimeException e) {
            u = null;
            m = null;
        }
        UNSAFE = u;
        INVOKE_CLEANER = m;
    }

    private Unmapper() {
    }

    static void unmap(ByteBuffer mapped) {
        if (INVOKE_CLEANER == null || mapped == null || !mapped.isDirect()) {
            return;
        }
        try {
            INVOKE_CLEANER.invoke(UNSAFE, mapped);
        } catch (ReflectiveOperationException | RuntimeException e) {
            // a slice or duplicate cannot be cleaned; the GC will release it
        }
    }
}
