package io.trainguard.tensor.format;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The validated JSON header of a safetensors file. Every way a header can lie about the data is
 * refused here, before a single data byte is touched: unknown dtype, offsets that do not match
 * the shape, tensors that overlap, leave holes, or run past the end of the data.
 */
public final class SafetensorsHeader {
    /** 8-byte little-endian header length that precedes the JSON. */
    public static final int PREFIX_BYTES = 8;

    private static final ObjectMapper JSON = new ObjectMapper(
            JsonFactory.builder().enable(com.fasterxml.jackson.core.StreamReadFeature.STRICT_DUPLICATE_DETECTION).build());

    private final long headerLength;
    private final List<TensorEntry> entries;
    private final Map<String, String> metadata;

    private SafetensorsHeader(long headerLength, List<TensorEntry> entries, Map<String, String> metadata) {
        this.headerLength = headerLength;
        this.entries = entries;
        this.metadata = metadata;
    }

    /** Length of the JSON header in bytes (without the 8-byte prefix). */
    public long headerLength() {
        return headerLength;
    }

    /** Where the data section starts in the file. */
    public long dataStart() {
        return PREFIX_BYTES + headerLength;
    }

    /** Tensors in data-offset order. */
    public List<TensorEntry> entries() {
        return entries;
    }

    public Map<String, String> metadata() {
        return metadata;
    }

    /**
     * Checks the 8-byte prefix against the limits and the file size; returns the header length.
     */
    public static long checkPrefix(ByteBuffer prefix, long fileSize, long maxHeaderBytes, String source) {
        if (fileSize < PREFIX_BYTES) {
            throw new RejectedTensorFileException(source + ": file is " + fileSize
                    + " bytes, shorter than the 8-byte safetensors header length; truncated or not a safetensors file");
        }
        long n = prefix.order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        if (n < 2 || n > maxHeaderBytes) {
            throw new RejectedTensorFileException(source + ": header length field says " + Long.toUnsignedString(n)
                    + " bytes, outside the accepted range 2.." + maxHeaderBytes
                    + " (trainguard.tensor.max-header-bytes); not a safetensors file or a corrupt one");
        }
        if (n > fileSize - PREFIX_BYTES) {
            throw new RejectedTensorFileException(source + ": header length field says " + n
                    + " bytes but the file has only " + (fileSize - PREFIX_BYTES)
                    + " bytes after the length field; the file is truncated");
        }
        return n;
    }

    /**
     * Parses and validates the JSON header.
     *
     * @param json       the header bytes (UTF-8 JSON object)
     * @param dataLength bytes in the data section (file size - 8 - header length)
     */
    public static SafetensorsHeader parse(byte[] json, long dataLength, String source) {
        checkUtf8(json, source);
        // Streamed, one tensor entry at a time: a whole-header tree (readTree) of a 98 MiB header
        // took a 1 GiB heap down. Memory here is bounded by maxTensors() entries of at most
        // MAX_DIMS dimensions each, plus the metadata strings (bounded by the header bytes).
        int maxTensors = maxTensors();
        Map<String, String> metadata = new LinkedHashMap<>();
        List<TensorEntry> entries = new ArrayList<>();
        try (JsonParser p = JSON.getFactory().createParser(json)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                throw new RejectedTensorFileException(source + ": header must be a JSON object");
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String name = p.currentName();
                p.nextToken();
                if (name.equals("__metadata__")) {
                    readMetadata(JSON.readTree(p), metadata, source);
                } else {
                    if (entries.size() >= maxTensors) {
                        throw new RejectedTensorFileException(source + ": header lists more than " + maxTensors
                                + " tensors, more than this sidecar's heap (" + (Runtime.getRuntime().maxMemory() >> 20)
                                + " MiB) verifies safely; raise -Xmx or save fewer, larger tensors");
                    }
                    entries.add(readEntry(name, boundedEntry(p, source + ": tensor '" + name + "'"), source));
                }
            }
        } catch (JsonProcessingException e) {
            throw new RejectedTensorFileException(source + ": header is not valid JSON: "
                    + e.getOriginalMessage(), e);
        } catch (java.io.IOException e) {
            throw new RejectedTensorFileException(source + ": header is not valid JSON: " + e.getMessage(), e);
        }
        entries.sort(Comparator.comparingLong(TensorEntry::begin).thenComparingLong(TensorEntry::end));
        checkLayout(entries, dataLength, source);
        return new SafetensorsHeader(json.length, List.copyOf(entries), Map.copyOf(metadata));
    }

    /** More dimensions than any real tensor has; a longer shape array is refused while streaming. */
    static final int MAX_DIMS = 64;

    /**
     * Tensors one header may list: about 8 KiB of heap per tensor across header, scan results and
     * the checkpoint record (a 1 GiB heap allows 131072; real checkpoints have hundreds to a few
     * thousand per file).
     */
    public static int maxTensors() {
        return (int) Math.max(1024, Math.min(Integer.MAX_VALUE, Runtime.getRuntime().maxMemory() / 8192));
    }

    /** The header bytes this heap reads at once: the configured cap, at most a sixteenth of the heap. */
    public static long maxHeaderBytes(long configured) {
        return Math.max(1 << 20, Math.min(configured, Runtime.getRuntime().maxMemory() / 16));
    }

    /** Validates UTF-8 through a small buffer (no String of the whole header). */
    private static void checkUtf8(byte[] json, String source) {
        var decoder = StandardCharsets.UTF_8.newDecoder().onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT);
        ByteBuffer in = ByteBuffer.wrap(json);
        java.nio.CharBuffer out = java.nio.CharBuffer.allocate(8192);
        while (true) {
            var r = decoder.decode(in, out, true);
            if (r.isError()) {
                throw new RejectedTensorFileException(source + ": header is not valid UTF-8");
            }
            out.clear();
            if (r.isUnderflow()) {
                break;
            }
        }
    }

    /**
     * Reads one tensor's object into a small tree: dtype, shape (at most MAX_DIMS numbers) and
     * data_offsets (at most 3 values, so a wrong count is still reported); other fields are skipped.
     */
    private static JsonNode boundedEntry(JsonParser p, String where) throws java.io.IOException {
        var nodes = JSON.getNodeFactory();
        if (p.currentToken() != JsonToken.START_OBJECT) {
            p.skipChildren();
            return nodes.nullNode();
        }
        var obj = nodes.objectNode();
        while (p.nextToken() == JsonToken.FIELD_NAME) {
            String field = p.currentName();
            JsonToken t = p.nextToken();
            if (field.equals("dtype") && t == JsonToken.VALUE_STRING) {
                obj.put("dtype", p.getText());
            } else if ((field.equals("shape") || field.equals("data_offsets")) && t == JsonToken.START_ARRAY) {
                int limit = field.equals("shape") ? MAX_DIMS : 3;
                var arr = obj.putArray(field);
                while (p.nextToken() != JsonToken.END_ARRAY) {
                    if (arr.size() >= limit) {
                        throw new RejectedTensorFileException(where + " has more than " + limit + " values in " + field);
                    }
                    arr.add(p.currentToken().isScalarValue() ? JSON.readTree(p) : nodes.nullNode());
                    p.skipChildren();
                }
            } else {
                p.skipChildren(); // unknown or mistyped: the checks below say what is missing
            }
        }
        return obj;
    }

    private static void readMetadata(JsonNode node, Map<String, String> out, String source) {
        if (!node.isObject()) {
            throw new RejectedTensorFileException(source + ": __metadata__ must be an object of strings");
        }
        node.fields().forEachRemaining(e -> {
            if (!e.getValue().isTextual()) {
                throw new RejectedTensorFileException(source + ": __metadata__." + e.getKey() + " must be a string");
            }
            out.put(e.getKey(), e.getValue().asText());
        });
    }

    private static TensorEntry readEntry(String name, JsonNode node, String source) {
        String where = source + ": tensor '" + name + "'";
        if (!node.isObject()) {
            throw new RejectedTensorFileException(where + " must be an object with dtype, shape, data_offsets");
        }
        JsonNode dt = node.get("dtype");
        if (dt == null || !dt.isTextual()) {
            throw new RejectedTensorFileException(where + " has no dtype string");
        }
        TensorDType dtype = TensorDType.fromSafetensors(dt.asText()).orElseThrow(() ->
                new RejectedTensorFileException(where + " has unknown dtype '" + dt.asText()
                        + "'; supported: " + TensorDType.supportedNames()));
        JsonNode sh = node.get("shape");
        if (sh == null || !sh.isArray()) {
            throw new RejectedTensorFileException(where + " has no shape array");
        }
        long[] shape = new long[sh.size()];
        long elements = 1;
        for (int i = 0; i < shape.length; i++) {
            shape[i] = nonNegativeLong(sh.get(i), where + " shape[" + i + "]");
            try {
                elements = Math.multiplyExact(elements, shape[i]);
            } catch (ArithmeticException e) {
                throw new RejectedTensorFileException(where + " has a shape whose element count overflows 64 bits");
            }
        }
        JsonNode off = node.get("data_offsets");
        if (off == null || !off.isArray() || off.size() != 2) {
            throw new RejectedTensorFileException(where + " needs data_offsets [begin, end]");
        }
        long begin = nonNegativeLong(off.get(0), where + " data_offsets[0]");
        long end = nonNegativeLong(off.get(1), where + " data_offsets[1]");
        if (end < begin) {
            throw new RejectedTensorFileException(where + " has data_offsets [" + begin + ", " + end
                    + "] with end before begin");
        }
        long expected;
        try {
            expected = Math.multiplyExact(elements, dtype.byteSize());
        } catch (ArithmeticException e) {
            throw new RejectedTensorFileException(where + " has a byte size that overflows 64 bits");
        }
        if (end - begin != expected) {
            throw new RejectedTensorFileException(where + " has data_offsets [" + begin + ", " + end + "] = "
                    + (end - begin) + " bytes, but shape " + java.util.Arrays.toString(shape) + " of " + dtype
                    + " needs " + expected + " bytes");
        }
        return new TensorEntry(name, dtype, shape, begin, end);
    }

    private static long nonNegativeLong(JsonNode n, String what) {
        if (n == null || !n.isIntegralNumber() || !n.canConvertToLong() || n.asLong() < 0) {
            throw new RejectedTensorFileException(what + " must be a non-negative 64-bit integer, got " + n);
        }
        return n.asLong();
    }

    /** Entries sorted by begin: the data section must be covered exactly, no overlap, no hole. */
    private static void checkLayout(List<TensorEntry> sorted, long dataLength, String source) {
        long cursor = 0;
        TensorEntry prev = null;
        for (TensorEntry e : sorted) {
            if (e.end() > dataLength) {
                throw new RejectedTensorFileException(source + ": tensor '" + e.name() + "' ends at data byte "
                        + e.end() + " but the data section has only " + dataLength
                        + " bytes; the file is truncated or its offsets are wrong");
            }
            if (e.begin() < cursor) {
                throw new RejectedTensorFileException(source + ": tensors '" + prev.name() + "' [" + prev.begin()
                        + ", " + prev.end() + ") and '" + e.name() + "' [" + e.begin() + ", " + e.end()
                        + ") overlap");
            }
            if (e.begin() > cursor) {
                throw new RejectedTensorFileException(source + ": " + (e.begin() - cursor)
                        + " unaccounted bytes in the data section before tensor '" + e.name() + "' at data byte "
                        + cursor + "; offsets do not describe a contiguous layout");
            }
            cursor = e.end();
            prev = e;
        }
        if (cursor != dataLength) {
            throw new RejectedTensorFileException(source + ": " + (dataLength - cursor)
                    + " trailing bytes after the last tensor (data section " + dataLength
                    + " bytes, tensors end at " + cursor + "); offsets do not match the file");
        }
    }
}
