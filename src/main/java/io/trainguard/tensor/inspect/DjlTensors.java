package io.trainguard.tensor.inspect;

import ai.djl.engine.Engine;
import ai.djl.ndarray.NDArray;
import ai.djl.ndarray.NDList;
import ai.djl.ndarray.NDManager;
import ai.djl.ndarray.types.DataType;
import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.format.UnverifiableTensorFileException;
import io.trainguard.tensor.scan.Checksum;
import io.trainguard.tensor.scan.TensorScanner;
import io.trainguard.tensor.scan.TensorStats;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * The DJL PyTorch engine, for the formats only it reads (numpy .npy/.npz, TorchScript). Loaded on
 * the first call that needs it, never at startup: libtorch costs ~0.5 s and a few hundred MB of
 * resident memory, which the idle sidecar must not pay. Offline: libtorch comes from the
 * pytorch-native-cpu jar, extracted once to {@code cacheDir}, never downloaded.
 */
public final class DjlTensors {
    private static final Object LOCK = new Object();
    private static volatile Engine engine;

    private final Path cacheDir;
    private final long maxFileBytes;

    /**
     * @param cacheDir     where libtorch is extracted (trainguard.tensor.djl-cache-dir); outside
     *                     target/ so it survives mvn clean
     * @param maxFileBytes files above this are refused (they would be decoded onto the heap)
     */
    public DjlTensors(Path cacheDir, long maxFileBytes) {
        this.cacheDir = cacheDir;
        this.maxFileBytes = maxFileBytes;
    }

    /** True once any instance has loaded the engine in this JVM. */
    public static boolean isEngineLoaded() {
        return engine != null;
    }

    Engine engine() {
        Engine e = engine;
        if (e != null) {
            return e;
        }
        synchronized (LOCK) {
            if (engine == null) {
                // must be set before the first Engine call: DJL reads them once
                System.setProperty("ai.djl.offline", "true");
                System.setProperty("DJL_CACHE_DIR", cacheDir.toString());
                System.setProperty("ai.djl.pytorch.graph_optimizer", "false");
                try {
                    Files.createDirectories(cacheDir);
                } catch (IOException io) {
                    throw new UnverifiableTensorFileException("cannot create the DJL cache directory " + cacheDir
                            + " (trainguard.tensor.djl-cache-dir): " + io.getMessage(), io);
                }
                try {
                    engine = Engine.getEngine("PyTorch");
                } catch (RuntimeException | UnsatisfiedLinkError ex) {
                    throw new UnverifiableTensorFileException("the DJL PyTorch engine could not be loaded offline ("
                            + ex.getMessage() + "); the image needs ai.djl.pytorch:pytorch-native-cpu on the "
                            + "classpath or libtorch in " + cacheDir, ex);
                }
            }
            return engine;
        }
    }

    /** Reads a .npy or .npz (or any format NDList.decode knows) and scans every array. */
    public List<TensorStats> readNumpy(Path file, Checksum checksum) throws IOException {
        long size = Files.size(file);
        if (size > maxFileBytes) {
            throw new UnverifiableTensorFileException(file.getFileName() + " is " + size
                    + " bytes; numpy files are decoded in memory and the limit is " + maxFileBytes
                    + " (trainguard.tensor.djl-max-file-bytes). Save large checkpoints as safetensors");
        }
        try (NDManager manager = engine().newBaseManager(); InputStream in = Files.newInputStream(file)) {
            NDList list;
            try {
                list = NDList.decode(manager, in);
            } catch (RuntimeException ex) {
                throw new RejectedTensorFileException(file.getFileName() + ": not a readable numpy file: "
                        + ex.getMessage(), ex);
            }
            List<TensorStats> out = new ArrayList<>(list.size());
            int i = 0;
            for (NDArray a : list) {
                String name = a.getName() != null ? a.getName() : "arr_" + i;
                out.add(stats(name, a, checksum));
                i++;
            }
            return out;
        }
    }

    /** Loads a TorchScript module and scans its parameters. */
    public List<TensorStats> readTorchScript(Path file) throws IOException {
        try (NDManager manager = engine().newBaseManager()) {
            ai.djl.pytorch.engine.PtSymbolBlock block;
            try {
                block = ai.djl.pytorch.jni.JniUtils.loadModule((ai.djl.pytorch.engine.PtNDManager) manager, file,
                        false, new String[0], new String[0], false);
            } catch (RuntimeException ex) {
                throw new RejectedTensorFileException(file.getFileName() + ": libtorch could not load it as "
                        + "TorchScript: " + ex.getMessage(), ex);
            }
            try {
                List<TensorStats> out = new ArrayList<>();
                block.getDirectParameters().forEach(pair ->
                        out.add(stats(pair.getKey(), pair.getValue().getArray(), Checksum.NONE)));
                return out;
            } finally {
                block.close();
            }
        }
    }

    /**
     * Statistics of a DJL array: the engine counts NaN/Inf (the cross-check), our scanner computes
     * max|x|, the norm and the checksum from the same bytes.
     */
    private static TensorStats stats(String name, NDArray a, Checksum checksum) {
        TensorDType t = toDType(a.getDataType(), name);
        long[] shape = a.getShape().getShape();
        TensorStats s = TensorScanner.scanBuffer(name, t, shape, a.toByteBuffer().order(ByteOrder.LITTLE_ENDIAN),
                checksum);
        if (t.isFloating() && a.getDataType() != DataType.BFLOAT16) {
            long engineNonFinite = a.isNaN().logicalOr(a.isInfinite()).countNonzero().toType(DataType.INT64, false)
                    .getLong();
            if (engineNonFinite != s.nonFiniteCount()) {
                throw new IllegalStateException("DJL and the scanner disagree on " + name + ": " + engineNonFinite
                        + " vs " + s.nonFiniteCount() + " non-finite values");
            }
        }
        return s;
    }

    static TensorDType toDType(DataType d, String name) {
        switch (d) {
            case FLOAT64: return TensorDType.F64;
            case FLOAT32: return TensorDType.F32;
            case FLOAT16: return TensorDType.F16;
            case BFLOAT16: return TensorDType.BF16;
            case INT64: return TensorDType.I64;
            case INT32: return TensorDType.I32;
            case INT16: return TensorDType.I16;
            case INT8: return TensorDType.I8;
            case UINT8: return TensorDType.U8;
            case BOOLEAN: return TensorDType.BOOL;
            default:
                throw new UnverifiableTensorFileException("array '" + name + "' has dtype " + d
                        + ", which the verifier does not check");
        }
    }
}
