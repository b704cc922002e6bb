package io.trainguard.tensor.format;

import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Enumeration;
import java.util.zip.ZipEntry;
import java.util.zip.ZipFile;

/** Recognises what a file really is from its first bytes, whatever the client said it was. */
public final class FormatSniffer {
    public enum Kind { SAFETENSORS_OR_UNKNOWN, NUMPY, ZIP_NUMPY, TORCH_ZIP_PICKLE, TORCHSCRIPT_ZIP, LEGACY_PICKLE, OTHER_ZIP }

    private FormatSniffer() {
    }

    public static Kind sniff(Path p) throws IOException {
        byte[] head = new byte[9];
        int n;
        try (InputStream in = Files.newInputStream(p)) {
            n = in.readNBytes(head, 0, head.length);
        }
        if (n == 9 && looksLikeSafetensors(head, Files.size(p))) {
            return Kind.SAFETENSORS_OR_UNKNOWN;
        }
        if (n >= 2 && (head[0] & 0xFF) == 0x80 && head[1] >= 2 && head[1] <= 5) {
            return Kind.LEGACY_PICKLE; // pickle PROTO opcode: torch.save(_use_new_zipfile_serialization=False)
        }
        if (n >= 6 && (head[0] & 0xFF) == 0x93 && head[1] == 'N' && head[2] == 'U' && head[3] == 'M'
                && head[4] == 'P' && head[5] == 'Y') {
            return Kind.NUMPY;
        }
        if (n >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4) {
            return zipKind(p);
        }
        return Kind.SAFETENSORS_OR_UNKNOWN;
    }

    /**
     * A safetensors file: its 8-byte little-endian header length, which fits in the file, then the
     * header's '{'. Checked first: a header 640 bytes long starts with 0x80 0x02, a pickle's opcode
     * pair, and such a file was taken for a torch.save pickle (UNVERIFIABLE).
     */
    private static boolean looksLikeSafetensors(byte[] head, long size) {
        long len = ByteBuffer.wrap(head).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        return head[8] == '{' && len > 0 && len <= size - 8;
    }

    private static Kind zipKind(Path p) throws IOException {
        boolean pkl = false;
        boolean code = false;
        boolean npy = false;
        try (ZipFile z = new ZipFile(p.toFile())) {
            for (Enumeration<? extends ZipEntry> e = z.entries(); e.hasMoreElements();) {
                String name = e.nextElement().getName();
                if (name.endsWith("data.pkl")) {
                    pkl = true;
                } else if (name.contains("/code/") || name.endsWith("constants.pkl")) {
                    code = true;
                } else if (name.endsWith(".npy")) {
                    npy = true;
                }
            }
        } catch (java.util.zip.ZipException e) {
            return Kind.OTHER_ZIP;
        }
        if (pkl && code) {
            return Kind.TORCHSCRIPT_ZIP;
        }
        if (pkl) {
            return Kind.TORCH_ZIP_PICKLE;
        }
        return npy ? Kind.ZIP_NUMPY : Kind.OTHER_ZIP;
    }

    /** The reason given for every torch.save pickle. */
    public static String pickleReason(Path p) {
        return p.getFileName() + " is a torch.save pickle: it can only be read by executing Python code, "
                + "so the sidecar does not open it. Save weights with safetensors "
                + "(safetensors.torch.save_file / save_model) to get them verified and made rollback targets";
    }
}
