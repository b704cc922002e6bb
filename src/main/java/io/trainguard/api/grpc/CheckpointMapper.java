package io.trainguard.api.grpc;

import com.google.protobuf.Timestamp;
import io.trainguard.api.grpc.v1.Checkpoint;
import io.trainguard.api.grpc.v1.CheckpointFile;
import io.trainguard.api.grpc.v1.DType;
import io.trainguard.api.grpc.v1.RegisterCheckpointRequest;
import io.trainguard.api.grpc.v1.TensorSummary;
import io.trainguard.checkpoint.CheckpointFileSpec;
import io.trainguard.checkpoint.CheckpointFormat;
import io.trainguard.checkpoint.CheckpointRecord;
import io.trainguard.checkpoint.VerificationProgress;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.tensor.format.TensorDType;
import io.trainguard.tensor.inspect.RawTensor;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import java.util.Optional;

/** Checkpoint and tensor messages <-> the checkpoint and tensor packages. */
public final class CheckpointMapper {
    private CheckpointMapper() {
    }

    public static CheckpointFormat format(io.trainguard.api.grpc.v1.CheckpointFormat f) {
        return switch (f) {
            case CHECKPOINT_FORMAT_SAFETENSORS -> CheckpointFormat.SAFETENSORS;
            case CHECKPOINT_FORMAT_NPY -> CheckpointFormat.NPY;
            case CHECKPOINT_FORMAT_NPZ -> CheckpointFormat.NPZ;
            case CHECKPOINT_FORMAT_TORCHSCRIPT -> CheckpointFormat.TORCHSCRIPT;
            case CHECKPOINT_FORMAT_TORCH_PICKLE -> CheckpointFormat.TORCH_PICKLE;
            case CHECKPOINT_FORMAT_MEMORY -> CheckpointFormat.MEMORY;
            default -> throw new InvalidRequestException("format must be set: SAFETENSORS (preferred), NPY, NPZ, "
                    + "TORCHSCRIPT, TORCH_PICKLE (accepted but unverifiable) or MEMORY (a trainer's in-memory snapshot)");
        };
    }

    public static List<CheckpointFileSpec> files(RegisterCheckpointRequest r) {
        if (r.getFilesCount() == 0) {
            throw new InvalidRequestException("files is empty: list the checkpoint's weight files (absolute paths)");
        }
        return r.getFilesList().stream().map(f -> new CheckpointFileSpec(f.getPath(),
                f.getSha256().isEmpty() ? null : f.getSha256(), f.getSizeBytes())).toList();
    }

    public static Checkpoint checkpoint(CheckpointRecord c, Optional<VerificationProgress> progress) {
        var b = Checkpoint.newBuilder().setCheckpointId(c.id()).setRunId(c.runId()).setStep(c.step())
                .setFormat(io.trainguard.api.grpc.v1.CheckpointFormat.valueOf("CHECKPOINT_FORMAT_" + c.format().name()))
                .setState(io.trainguard.api.grpc.v1.CheckpointState.valueOf("CHECKPOINT_STATE_" + c.state().name()))
                .setStateReason(c.stateReason() == null ? "" : c.stateReason()).setDataPosition(c.dataPosition())
                .setRegisteredTime(Timestamp.newBuilder().setSeconds(c.registeredAt().getEpochSecond())
                        .setNanos(c.registeredAt().getNano()))
                .setHealthyStepsSince(c.healthyStepsSince()).setVerifyBytesPerSecond(c.verifyBytesPerSecond());
        for (CheckpointFileSpec f : c.files()) {
            b.addFiles(CheckpointFile.newBuilder().setPath(f.path()).setSha256(f.sha256() == null ? "" : f.sha256())
                    .setSizeBytes(f.sizeBytes()));
        }
        progress.ifPresentOrElse(p -> b.setVerifyProgress(p.fraction()).setVerifyBytesPerSecond(p.bytesPerSecond()),
                () -> b.setVerifyProgress(c.verifiedBytes() > 0 || c.state().isTerminal() ? 1.0 : 0.0));
        return b.build();
    }

    static TensorDType dtype(DType d) {
        return switch (d) {
            case D_TYPE_FLOAT32 -> TensorDType.F32;
            case D_TYPE_FLOAT16 -> TensorDType.F16;
            case D_TYPE_BFLOAT16 -> TensorDType.BF16;
            case D_TYPE_FLOAT64 -> TensorDType.F64;
            case D_TYPE_FLOAT8_E4M3 -> TensorDType.F8_E4M3;
            case D_TYPE_FLOAT8_E5M2 -> TensorDType.F8_E5M2;
            case D_TYPE_INT64 -> TensorDType.I64;
            case D_TYPE_INT32 -> TensorDType.I32;
            case D_TYPE_INT16 -> TensorDType.I16;
            case D_TYPE_INT8 -> TensorDType.I8;
            case D_TYPE_UINT8 -> TensorDType.U8;
            case D_TYPE_BOOL -> TensorDType.BOOL;
            default -> throw new InvalidRequestException("tensor dtype must be set");
        };
    }

    static DType dtype(TensorDType d) {
        return switch (d) {
            case F32 -> DType.D_TYPE_FLOAT32;
            case F16 -> DType.D_TYPE_FLOAT16;
            case BF16 -> DType.D_TYPE_BFLOAT16;
            case F64 -> DType.D_TYPE_FLOAT64;
            case F8_E4M3 -> DType.D_TYPE_FLOAT8_E4M3;
            case F8_E5M2 -> DType.D_TYPE_FLOAT8_E5M2;
            case I64 -> DType.D_TYPE_INT64;
            case I32 -> DType.D_TYPE_INT32;
            case I16 -> DType.D_TYPE_INT16;
            case I8 -> DType.D_TYPE_INT8;
            case U8 -> DType.D_TYPE_UINT8;
            case BOOL -> DType.D_TYPE_BOOL;
        };
    }

    public static List<RawTensor> rawTensors(List<io.trainguard.api.grpc.v1.RawTensor> tensors) {
        return tensors.stream().map(t -> new RawTensor(t.getName(), dtype(t.getDtype()),
                t.getShapeList().stream().mapToLong(Long::longValue).toArray(),
                t.getData().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN))).toList();
    }

    public static ByteBuffer blob(com.google.protobuf.ByteString bytes) {
        return bytes.asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
    }

    public static TensorSummary summary(io.trainguard.tensor.inspect.TensorSummary s) {
        return TensorSummary.newBuilder().setName(s.name()).setDtype(dtype(s.dtype())).addAllShape(s.shape())
                .setNanCount(s.nanCount()).setInfCount(s.infCount()).addAllFirstNonfiniteIndices(s.firstNonFiniteIndices())
                .setMin(s.min()).setMax(s.max()).setMean(s.mean()).setStd(s.std()).build();
    }

    public static io.trainguard.api.grpc.v1.CheckpointTensorSummary checkpointTensor(
            io.trainguard.tensor.inspect.CheckpointTensorSummary t) {
        return io.trainguard.api.grpc.v1.CheckpointTensorSummary.newBuilder().setFile(t.file())
                .setSummary(summary(t.summary())).setUnit(t.unit()).setUnitElements(t.unitElements())
                .setNonfiniteUnits(t.nonFiniteUnits()).addAllFirstNonfiniteUnits(t.firstNonFiniteUnits()).build();
    }
}
