package io.trainguard.tensor.scan;

import io.trainguard.tensor.format.ReadMode;
import io.trainguard.tensor.format.SafetensorsFile;
import io.trainguard.tensor.format.TensorDType;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.zip.CRC32C;

/**
 * {@link TensorScanner#warmUp}: runs once at start, never during a verification, so it is kept
 * out of the scanner's own code. See there for why it is needed and why it looks like this.
 */
final class ScanWarmUp {
    private static final int WARM_UP_CALLS = 8000;
    private static final int WARM_UP_SCANS = 300;
    private static final int WARM_UP_TENSOR_BYTES = 256 << 10;
    private static final TensorDType[] WARM_UP_DTYPES = {TensorDType.F32, TensorDType.BF16, TensorDType.F16};

    private ScanWarmUp() {
    }

    static String run(TensorScanner scanner, ScanOptions options) {
        if (!options.simd() || !ScanKernels.SIMD_AVAILABLE) {
            return "nothing (scalar kernels)";
        }
        ByteBuffer b = ByteBuffer.allocateDirect(WARM_UP_TENSOR_BYTES).order(ByteOrder.LITTLE_ENDIAN);
        fillFinite(b);
        // 2 KiB calls got C2 to compile the kernels within about a second; 256-byte calls never
        // reached its thresholds.
        // The buffer classes a scan passes, so that C2 compiles for them and a real scan finds no
        // class the compiled code did not expect (that threw the compiled scan loop away at the
        // first verification): mapped units are read-only direct buffers, pread buffers writable
        // ones, and the file's header goes through the same loop from a heap buffer.
        ByteBuffer small = b.duplicate().limit(2048).slice().order(ByteOrder.LITTLE_ENDIAN);
        if (scanner.readMode() == ReadMode.MAP) {
            small = small.asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
        }
        ByteBuffer header = ByteBuffer.allocate(2048).order(ByteOrder.LITTLE_ENDIAN);
        ScanOptions headerOptions = new ScanOptions(options.checksum(), false, options.simd());
        for (int round = 0; round < WARM_UP_CALLS; round++) {
            for (TensorDType t : WARM_UP_DTYPES) {
                CRC32C crc = options.checksum() == Checksum.CRC32C ? new CRC32C() : null;
                ScanKernels.scanInto(small, 0, small.capacity(), t, new ScanAccumulator(), options, crc);
            }
            ScanKernels.scan(header, 0, header.capacity(), TensorDType.U8, new ScanAccumulator(), headerOptions);
        }
        String done = "kernels";
        Path file = null;
        try {
            file = Files.createTempFile("trainguard-warmup-", ".safetensors");
            writeWarmUpCheckpoint(file, b);
            for (int round = 0; round < WARM_UP_SCANS; round++) {
                try (SafetensorsFile f = SafetensorsFile.open(file)) {
                    scanner.scan(f, options, ScanProgress.NONE);
                }
            }
            done = "kernels and " + WARM_UP_SCANS + " scans of a synthetic checkpoint";
        } catch (IOException e) {
            done = "kernels only (no temp file for a synthetic checkpoint: " + e.getMessage() + ")";
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } finally {
            if (file != null) {
                file.toFile().delete();
            }
        }
        // Until compiled, every vector was a heap object: a few hundred MB of garbage that made the
        // collector grow the heap. One full collection gives that memory back to the system.
        System.gc();
        return done;
    }

    private static void fillFinite(ByteBuffer b) {
        for (int i = 0; i + 2 <= b.capacity(); i += 2) {
            // bit 14 of every 16-bit half clear: finite read as fp32, bf16 and fp16 alike
            b.putShort(i, (short) ((i * 37) & 0xBBFF));
        }
    }

    /** One tensor of each warmed-up dtype, each holding {@code data}'s bytes. */
    private static void writeWarmUpCheckpoint(Path file, ByteBuffer data) throws IOException {
        StringBuilder header = new StringBuilder("{");
        long offset = 0;
        int bytes = data.capacity();
        for (TensorDType t : WARM_UP_DTYPES) {
            header.append(offset == 0 ? "" : ",").append('"').append(t).append("\":{\"dtype\":\"").append(t)
                    .append("\",\"shape\":[").append(bytes / t.byteSize()).append("],\"data_offsets\":[")
                    .append(offset).append(',').append(offset + bytes).append("]}");
            offset += bytes;
        }
        byte[] json = header.append('}').toString().getBytes(StandardCharsets.US_ASCII);
        ByteBuffer out = ByteBuffer.allocate(8 + json.length + (int) offset).order(ByteOrder.LITTLE_ENDIAN);
        out.putLong(json.length).put(json);
        for (TensorDType t : WARM_UP_DTYPES) {
            out.put(data.duplicate().clear());
        }
        Files.write(file, out.array());
    }
}
