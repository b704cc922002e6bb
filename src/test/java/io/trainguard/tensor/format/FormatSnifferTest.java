package io.trainguard.tensor.format;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class FormatSnifferTest {
    @TempDir
    Path dir;

    @Test
    void sniff_safetensorsWhoseHeaderLengthStartsLikeAPickle_isSafetensors() throws Exception {
        // prevents: a safetensors file with a 640-byte header (0x80 0x02 ...) read as a torch.save
        // pickle and left UNVERIFIABLE (one checkpoint in 256 header lengths or so, by chance)
        String header = "{\"__metadata__\":{\"run\":\"x\"}}";
        byte[] json = (header + " ".repeat(640 - header.length())).getBytes(StandardCharsets.UTF_8);
        ByteBuffer b = ByteBuffer.allocate(8 + json.length).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(json.length).put(json);
        Path p = Files.write(dir.resolve("model.safetensors"), b.array());
        assertEquals(0x80, b.array()[0] & 0xFF);
        assertEquals(FormatSniffer.Kind.SAFETENSORS_OR_UNKNOWN, FormatSniffer.sniff(p));
    }

    @Test
    void sniff_legacyTorchPickle_isAPickle() throws Exception {
        // prevents: the safetensors check swallowing a real torch.save(_use_new_zipfile_serialization=False) file
        byte[] legacy = {(byte) 0x80, 0x02, (byte) 0x8a, 0x0a, 0x6c, (byte) 0xfc, (byte) 0x9c, 0x46, (byte) 0xf9, 0x20};
        Path p = Files.write(dir.resolve("model.pt"), legacy);
        assertEquals(FormatSniffer.Kind.LEGACY_PICKLE, FormatSniffer.sniff(p));
    }
}
