package io.trainguard.tensor.inspect;

import io.trainguard.tensor.format.Elements;
import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.SafetensorsHeader;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.format.TensorEntry;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * InspectTensors: NaN/Inf counts, the first offending flat indices and finite-part statistics of
 * the tensors a trainer ships around an incident. Works on data already in memory (the gRPC
 * message), within explicit limits so that one request cannot exhaust the sidecar.
 */
public final class TensorInspector {
    public static final int MAX_REPORTED_INDICES = 16;

    private final long maxTotalBytes;
    private final int maxTensors;

    /**
     * @param maxTotalBytes trainguard.tensor.inspect-max-bytes (default 64 MiB)
     * @param maxTensors    trainguard.tensor.inspect-max-tensors (default 256)
     */
    public TensorInspector(long maxTotalBytes, int maxTensors) {
        this.maxTotalBytes = maxTotalBytes;
        this.maxTensors = maxTensors;
    }

    public List<TensorSummary> inspect(List<RawTensor> tensors) {
        if (tensors.size() > maxTensors) {
            throw new TensorInputException(tensors.size() + " tensors sent, the limit is " + maxTensors
                    + " (trainguard.tensor.inspect-max-tensors); send the tensors around the first non-finite "
                    + "module only");
        }
        long total = 0;
        for (RawTensor t : tensors) {
            total += t.data().remaining();
        }
        checkTotal(total);
        List<TensorSummary> out = new ArrayList<>(tensors.size());
        for (RawTensor t : tensors) {
            String name = t.name() == null || t.name().isEmpty() ? "tensor_" + out.size() : t.name();
            if (t.dtype() == null) {
                throw new TensorInputException("tensor '" + name + "' has no dtype");
            }
            long elements = 1;
            for (long d : t.shape()) {
                if (d < 0) {
                    throw new TensorInputException("tensor '" + name + "' has a negative dimension in shape "
                            + Arrays.toString(t.shape()));
                }
                elements = Math.multiplyExact(elements, d);
            }
            long expected = elements * t.dtype().byteSize();
            if (expected != t.data().remaining()) {
                throw new TensorInputException("tensor '" + name + "': shape " + Arrays.toString(t.shape()) + " of "
                        + t.dtype() + " needs " + expected + " bytes, " + t.data().remaining() + " were sent");
            }
            out.add(summarize(name, t.dtype(), t.shape(), t.data().duplicate().order(ByteOrder.LITTLE_ENDIAN)));
        }
        return out;
    }

    /** Summarises every tensor of an in-memory safetensors blob (validated like a checkpoint). */
    public List<TensorSummary> inspectSafetensors(ByteBuffer blob) {
        checkTotal(blob.remaining());
        ByteBuffer b = blob.slice().order(ByteOrder.LITTLE_ENDIAN);
        SafetensorsHeader h;
        try {
            long n = SafetensorsHeader.checkPrefix(b, b.remaining(), Math.min(b.remaining(), 100L << 20), "blob");
            byte[] json = new byte[(int) n];
            b.get(SafetensorsHeader.PREFIX_BYTES, json);
            h = SafetensorsHeader.parse(json, b.remaining() - SafetensorsHeader.PREFIX_BYTES - n, "blob");
        } catch (RejectedTensorFileException e) {
            throw new TensorInputException("the safetensors blob is invalid: " + e.getMessage());
        }
        if (h.entries().size() > maxTensors) {
            throw new TensorInputException(h.entries().size() + " tensors in the blob, the limit is " + maxTensors
                    + " (trainguard.tensor.inspect-max-tensors)");
        }
        List<TensorSummary> out = new ArrayList<>();
        for (TensorEntry e : h.entries()) {
            ByteBuffer slice = b.slice((int) (h.dataStart() + e.begin()), (int) e.byteLength())
                    .order(ByteOrder.LITTLE_ENDIAN);
            out.add(summarize(e.name(), e.dtype(), e.shape(), slice));
        }
        return out;
    }

    private void checkTotal(long total) {
        if (total > maxTotalBytes) {
            throw new TensorInputException(total + " bytes of tensors sent, the limit is " + maxTotalBytes
                    + " (trainguard.tensor.inspect-max-bytes); send fewer or smaller tensors (e.g. the first "
                    + "non-finite module's output) or raise the limit");
        }
    }

    static TensorSummary summarize(String name, TensorDType t, long[] shape, ByteBuffer b) {
        long n = b.remaining() / t.byteSize();
        int base = b.position();
        long nan = 0;
        long inf = 0;
        List<Long> first = new ArrayList<>();
        double min = Double.POSITIVE_INFINITY;
        double max = Double.NEGATIVE_INFINITY;
        double sum = 0;
        long finite = 0;
        for (long i = 0; i < n; i++) {
            double v = Elements.get(b, base, i, t);
            if (Double.isNaN(v) || Double.isInfinite(v)) {
                if (Double.isNaN(v)) {
                    nan++;
                } else {
                    inf++;
                }
                if (first.size() < MAX_REPORTED_INDICES) {
                    first.add(i);
                }
                continue;
            }
            min = Math.min(min, v);
            max = Math.max(max, v);
            sum += v;
            finite++;
        }
        double mean = finite == 0 ? Double.NaN : sum / finite;
        double sq = 0;
        if (finite > 0) {
            // second pass around the mean: stable where sum-of-squares minus mean^2 is not
            for (long i = 0; i < n; i++) {
                double v = Elements.get(b, base, i, t);
                if (!Double.isNaN(v) && !Double.isInfinite(v)) {
                    sq += (v - mean) * (v - mean);
                }
            }
        }
        return new TensorSummary(name, t, Arrays.stream(shape).boxed().toList(), nan, inf, List.copyOf(first),
                finite == 0 ? Double.NaN : min, finite == 0 ? Double.NaN : max, mean,
                finite == 0 ? Double.NaN : Math.sqrt(sq / finite));
    }
}
