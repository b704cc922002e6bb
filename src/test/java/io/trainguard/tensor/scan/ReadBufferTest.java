package io.trainguard.tensor.scan;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.trainguard.tensor.format.ReadBuffer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import org.junit.jupiter.api.Test;

class ReadBufferTest {
    @Test
    void allocate_largeBuffer_startsOnAPageWithExactCapacity() {
        // prevents: the scanner's read buffer starting 16 bytes into a page, where the kernel's copy
        // out of the page cache ran five times slower on the benchmark machine
        for (int bytes : new int[] {64 << 10, TensorScanner.READ_BYTES, 1 << 20}) {
            ByteBuffer b = ReadBuffer.allocate(bytes);
            assertEquals(0, b.alignmentOffset(0, 4096), "bytes=" + bytes);
            assertEquals(bytes, b.capacity());
            assertEquals(ByteOrder.LITTLE_ENDIAN, b.order());
        }
    }
}
