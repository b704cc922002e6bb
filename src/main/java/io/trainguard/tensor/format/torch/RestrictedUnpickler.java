package io.trainguard.tensor.format.torch;

import io.trainguard.tensor.format.RejectedTensorFileException;
import io.trainguard.tensor.format.TensorDType;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import net.razorvine.pickle.IObjectConstructor;
import net.razorvine.pickle.PickleException;
import net.razorvine.pickle.PickleUtils;
import net.razorvine.pickle.Unpickler;

/**
 * Pyrolite's pickle VM with every way to name Python code intercepted: the GLOBAL and
 * STACK_GLOBAL opcodes resolve only the allow-listed names of a tensor checkpoint (tensor and
 * storage rebuilding, OrderedDict, torch dtypes and layouts, the data classes of DCP metadata);
 * any other name, and the opcodes that import by other means (INST, OBJ, EXT*), end the load with
 * REJECTED naming what was refused. Allowed names build plain Java data ({@link TensorRef},
 * {@link StorageRef}, {@link PyObject}, maps, lists); Pyrolite's own reflection-based BUILD is
 * replaced too. Nothing is executed, whatever the pickle says, unlike Python's torch.load.
 */
public final class RestrictedUnpickler extends Unpickler {
    private static final short GLOBAL = 'c';
    private static final short STACK_GLOBAL = 0x93;
    private static final short INST = 'i';
    private static final short OBJ = 'o';
    private static final short EXT1 = 0x82;
    private static final short EXT2 = 0x83;
    private static final short EXT4 = 0x84;
    private static final short BUILD = 'b';

    private static final Map<String, TensorDType> STORAGE_TYPES = Map.ofEntries(
            Map.entry("torch.DoubleStorage", TensorDType.F64), Map.entry("torch.FloatStorage", TensorDType.F32),
            Map.entry("torch.HalfStorage", TensorDType.F16), Map.entry("torch.BFloat16Storage", TensorDType.BF16),
            Map.entry("torch.LongStorage", TensorDType.I64), Map.entry("torch.IntStorage", TensorDType.I32),
            Map.entry("torch.ShortStorage", TensorDType.I16), Map.entry("torch.CharStorage", TensorDType.I8),
            Map.entry("torch.ByteStorage", TensorDType.U8), Map.entry("torch.BoolStorage", TensorDType.BOOL),
            Map.entry("torch.Float8_e4m3fnStorage", TensorDType.F8_E4M3),
            Map.entry("torch.Float8_e5m2Storage", TensorDType.F8_E5M2));

    /** torch attributes that are plain values (dtypes, layouts, memory formats). */
    private static final Set<String> TORCH_VALUES = Set.of("float64", "float32", "float16", "bfloat16", "int64",
            "int32", "int16", "int8", "uint8", "bool", "float8_e4m3fn", "float8_e5m2", "complex64", "complex128",
            "strided", "sparse_coo", "contiguous_format", "preserve_format", "channels_last", "channels_last_3d");

    /**
     * Classes whose pickled form is data only, kept as {@link PyObject}: DCP metadata, Lightning's
     * trainer state, torch.Size/device, pathlib paths.
     */
    private static final Set<String> DATA_CLASSES = Set.of(
            "torch.Size", "torch.device", "torch.torch_version.TorchVersion",
            "torch.nn.parameter.Parameter", "torch.Tensor",
            "torch.distributed.checkpoint.metadata.Metadata",
            "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
            "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
            "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
            "torch.distributed.checkpoint.metadata.TensorProperties",
            "torch.distributed.checkpoint.metadata.MetadataIndex",
            "torch.distributed.checkpoint.metadata.StorageMeta",
            "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
            "torch.distributed.checkpoint.filesystem._StorageInfo",
            "torch.distributed.checkpoint.planner.LoadItemType",
            "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path",
            "lightning.fabric.utilities.data.AttributeDict",
            "pytorch_lightning.utilities.parsing.AttributeDict",
            "lightning.pytorch.utilities.parsing.AttributeDict",
            "argparse.Namespace",
            // numpy arrays, dtypes and scalars: a training script's np.random.get_state() saved beside the
            // weights (held as opaque data here, never reconstructed); numpy 1.x and 2.x module names
            "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
            "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
            "numpy.ndarray", "numpy.dtype", "_codecs.encode");

    public RestrictedUnpickler() {
        super();
    }

    /** Unpickles {@code pickle}; REJECTED naming the refused global or the malformed part. */
    public static Object load(byte[] pickle, String source) throws RejectedTensorFileException {
        RestrictedUnpickler u = new RestrictedUnpickler();
        try {
            return u.loads(pickle);
        } catch (RefusedGlobal r) {
            throw new RejectedTensorFileException(source + " refers to the Python global '" + r.getMessage()
                    + "', which a tensor checkpoint does not need and which torch.load would execute or import; "
                    + "the sidecar never runs pickled code. Save only tensors, dicts, lists and numbers "
                    + "(model.state_dict(), optimizer.state_dict())");
        } catch (IOException | RuntimeException e) {
            throw new RejectedTensorFileException(source + " is not a pickle a tensor checkpoint writes: " + e);
        } finally {
            u.close();
        }
    }

    /** Thrown at the first refused name; never escapes {@link #load}. */
    static final class RefusedGlobal extends RuntimeException {
        RefusedGlobal(String name) {
            super(name, null, false, false);
        }
    }

    @Override
    protected Object dispatch(short key) throws PickleException, IOException {
        switch (key) {
            case GLOBAL: {
                String module = PickleUtils.readline(input);
                String name = PickleUtils.readline(input);
                stack.add(resolve(module, name));
                return NO_RETURN_VALUE;
            }
            case STACK_GLOBAL: {
                Object name = stack.pop();
                Object module = stack.pop();
                stack.add(resolve(String.valueOf(module), String.valueOf(name)));
                return NO_RETURN_VALUE;
            }
            case INST:
            case OBJ:
                throw new RefusedGlobal("(INST/OBJ opcode: a protocol-0/1 class instance)");
            case EXT1:
            case EXT2:
            case EXT4:
                throw new RefusedGlobal("(EXT opcode: a copyreg extension code)");
            case BUILD: {
                Object state = stack.pop();
                Object target = stack.peek();
                if (target instanceof PyObject o) {
                    o.setState(state);
                } else if (target instanceof TensorRef) {
                    // a tensor subclass's __dict__ (empty for Parameter); no data of the tensor
                } else if (target instanceof Map<?, ?> m && state instanceof Map<?, ?> s) {
                    putAll(m, s);
                } else {
                    throw new PickleException("BUILD of " + className(target) + " is not data");
                }
                return NO_RETURN_VALUE;
            }
            default:
                return super.dispatch(key);
        }
    }

    @SuppressWarnings("unchecked")
    private static void putAll(Map<?, ?> target, Map<?, ?> state) {
        ((Map<Object, Object>) target).putAll(state);
    }

    @Override
    protected Object persistentLoad(Object pid) {
        // torch.save: ('storage', <storage type>, key, location, numel)
        if (pid instanceof Object[] t && t.length >= 5 && "storage".equals(t[0]) && t[1] instanceof Global g
                && g.storageType != null) {
            return new StorageRef(String.valueOf(t[2]), g.storageType, ((Number) t[4]).longValue());
        }
        throw new PickleException("persistent id " + java.util.Arrays.deepToString(
                pid instanceof Object[] a ? a : new Object[] {pid}) + " is not a torch storage");
    }

    private static Global resolve(String module, String name) {
        String full = module + "." + name;
        if (STORAGE_TYPES.containsKey(full)) {
            return new Global(full, STORAGE_TYPES.get(full), null);
        }
        switch (full) {
            case "collections.OrderedDict":
                return new Global(full, null, args -> orderedDict(args));
            case "torch._utils._rebuild_tensor_v2":
            case "torch._utils._rebuild_tensor":
                return new Global(full, null, RestrictedUnpickler::rebuildTensor);
            case "torch._utils._rebuild_parameter":
            case "torch._utils._rebuild_parameter_with_state":
                return new Global(full, null, args -> args[0]); // (tensor, requires_grad, hooks[, state])
            case "torch._tensor._rebuild_from_type_v2":
                // (func, type, args, state): func must itself be an allowed rebuild function
                return new Global(full, null, args -> ((Global) args[0]).construct((Object[]) args[2]));
            case "torch.serialization._get_layout":
                // how torch pickles a layout: _get_layout("torch.strided"), a lookup by name
                return new Global(full, null, args -> String.valueOf(args[0]));
            case "_codecs.encode":
                // protocol 2 writes bytes as encode(str, 'latin1')
                return new Global(full, null, args -> ((String) args[0]).getBytes(
                        java.nio.charset.StandardCharsets.ISO_8859_1));
            case "builtins.set":
            case "builtins.frozenset":
                return new Global(full, null, args -> args.length == 0 ? new ArrayList<>()
                        : new ArrayList<>((List<?>) args[0]));
            default:
                break;
        }
        if (module.equals("torch") && TORCH_VALUES.contains(name)) {
            return new Global(full, null, null);
        }
        if (DATA_CLASSES.contains(full)) {
            return new Global(full, null, args -> new PyObject(full, args));
        }
        throw new RefusedGlobal(full);
    }

    private static Object orderedDict(Object[] args) {
        Map<Object, Object> m = new LinkedHashMap<>();
        if (args.length > 0 && args[0] instanceof List<?> pairs) {
            for (Object p : pairs) {
                Object[] kv = (Object[]) p;
                m.put(kv[0], kv[1]);
            }
        }
        return m;
    }

    private static Object rebuildTensor(Object[] a) {
        if (!(a[0] instanceof StorageRef s)) {
            throw new PickleException("_rebuild_tensor_v2 without a storage");
        }
        return new TensorRef(s, ((Number) a[1]).longValue(), longs(a[2]), longs(a[3]));
    }

    private static long[] longs(Object tuple) {
        Object[] t = tuple instanceof PyObject p ? (Object[]) p.args()[0] : (Object[]) tuple;
        long[] out = new long[t.length];
        for (int i = 0; i < t.length; i++) {
            out[i] = ((Number) t[i]).longValue();
        }
        return out;
    }

    private static String className(Object o) {
        return o == null ? "None" : o instanceof PyObject p ? p.type() : o.getClass().getSimpleName();
    }

    /** An allowed global: a value (dtype, storage type) or a data-only constructor. */
    public static final class Global implements IObjectConstructor {
        private final String name;
        final TensorDType storageType;
        private final java.util.function.Function<Object[], Object> make;

        Global(String name, TensorDType storageType, java.util.function.Function<Object[], Object> make) {
            this.name = name;
            this.storageType = storageType;
            this.make = make;
        }

        public String name() {
            return name;
        }

        @Override
        public Object construct(Object[] args) {
            if (make == null) {
                throw new PickleException(name + " is a value, not something to call");
            }
            return make.apply(args);
        }

        @Override
        public String toString() {
            return name;
        }
    }
}
