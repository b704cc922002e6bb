package io.trainguard.tensor.format;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class SafetensorsFileTest {
    @TempDir
    Path dir;

    private String rejection(byte[] content) throws Exception {
        Path p = Files.write(dir.resolve("m.safetensors"), content);
        RejectedTensorFileException e = assertThrows(RejectedTensorFileException.class, () -> {
            try (SafetensorsFile f = SafetensorsFile.open(p, 1 << 20)) {
                f.entries();
            }
        });
        return e.reason();
    }

    @Test
    void open_validFile_listsTensorsInOffsetOrder() throws Exception {
        // prevents: header entries taken in JSON order, breaking piece/offset bookkeeping
        Path p = new SafetensorsWriter().f32("a", 1, 2).bf16("b", 3).i32("c", 7).write(dir.resolve("ok.safetensors"));
        try (SafetensorsFile f = SafetensorsFile.open(p)) {
            assertEquals(3, f.entries().size());
            assertEquals("a", f.entries().get(0).name());
            assertEquals(TensorDType.BF16, f.entries().get(1).dtype());
        }
    }

    @Test
    void open_truncatedData_rejectedAsTruncated() throws Exception {
        // prevents: reading past EOF of a half-written checkpoint and calling it verified
        byte[] full = new SafetensorsWriter().f32("w", 1, 2, 3, 4).bytes();
        String reason = rejection(Arrays.copyOf(full, full.length - 4));
        assertTrue(reason.contains("'w' ends at data byte 16") && reason.contains("truncated"), reason);
    }

    @Test
    void open_truncatedHeader_rejected() throws Exception {
        // prevents: trusting the length prefix of a file cut inside its header
        byte[] full = new SafetensorsWriter().f32("w", 1).bytes();
        String reason = rejection(Arrays.copyOf(full, 20));
        assertTrue(reason.contains("truncated"), reason);
    }

    @Test
    void open_offsetsDisagreeWithShape_rejected() throws Exception {
        // prevents: a header that lies about a tensor's size making us scan the wrong bytes
        byte[] b = new SafetensorsWriter().entry("w", "F32", new long[] {4}, 0, 8).extraData(new byte[8]).bytes();
        String reason = rejection(b);
        assertTrue(reason.contains("'w'") && reason.contains("needs 16 bytes"), reason);
    }

    @Test
    void open_overlappingTensors_rejected() throws Exception {
        // prevents: two tensors aliasing the same bytes (a crafted or corrupted header)
        byte[] b = new SafetensorsWriter().entry("a", "F32", new long[] {4}, 0, 16)
                .entry("b", "F32", new long[] {4}, 8, 24).extraData(new byte[24]).bytes();
        String reason = rejection(b);
        assertTrue(reason.contains("overlap") && reason.contains("'a'") && reason.contains("'b'"), reason);
    }

    @Test
    void open_holeOrTrailingBytes_rejected() throws Exception {
        // prevents: data not covered by any tensor going unchecked
        byte[] b = new SafetensorsWriter().f32("a", 1).extraData(new byte[4]).bytes();
        assertTrue(rejection(b).contains("trailing bytes"));
    }

    @Test
    void open_unknownDtype_rejectedNamingIt() throws Exception {
        // prevents: silently skipping tensors of a dtype we cannot check
        byte[] b = new SafetensorsWriter().raw("q", "F4", new long[] {2}, new byte[1]).bytes();
        String reason = rejection(b);
        assertTrue(reason.contains("unknown dtype 'F4'") && reason.contains("'q'"), reason);
    }

    @Test
    void open_absurdHeaderLength_rejectedWithoutAllocating() throws Exception {
        // prevents: allocating a multi-GB header buffer from an 8-byte lie (OOM of the sidecar)
        ByteBuffer b = ByteBuffer.allocate(64).order(ByteOrder.LITTLE_ENDIAN).putLong(1L << 40);
        String reason = rejection(b.array());
        assertTrue(reason.contains("outside the accepted range"), reason);
    }

    @Test
    void open_headerNotJson_rejected() throws Exception {
        // prevents: a random binary file being treated as an empty checkpoint
        ByteBuffer b = ByteBuffer.allocate(24).order(ByteOrder.LITTLE_ENDIAN).putLong(16).put("garbage garbage!".getBytes());
        assertTrue(rejection(b.array()).contains("not valid JSON"));
    }
}
