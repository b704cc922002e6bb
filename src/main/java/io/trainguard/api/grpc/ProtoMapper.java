package io.trainguard.api.grpc;

import com.google.protobuf.Duration;
import com.google.protobuf.Timestamp;
import io.trainguard.api.grpc.v1.ModuleStats;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.AuditFinding;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.model.ClipMode;
import io.trainguard.guard.model.DType;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.LocalBounds;
import io.trainguard.guard.model.ParameterGroup;
import io.trainguard.guard.model.Phase;
import io.trainguard.guard.model.PrecisionSetup;
import io.trainguard.guard.model.RollbackPlan;
import io.trainguard.guard.model.RunSetup;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.guard.model.RunState;
import io.trainguard.guard.model.StepReport;
import io.trainguard.guard.model.ValidationAudit;
import io.trainguard.guard.model.Verdict;
import io.trainguard.guard.policy.Policy;
import java.time.Instant;
import java.util.function.UnaryOperator;

/** Translates between trainguard.v1 messages and engine types; no decisions here. */
public final class ProtoMapper {
    private ProtoMapper() {
    }

    // ------------------------------------------------------------------ in

    public static RunSetup setup(io.trainguard.api.grpc.v1.OpenRunRequest r) {
        var model = r.getModel();
        return new RunSetup(r.getRunId(), r.getRank(), r.getWorldSize(), overrides(r.getPolicy()),
                model.getParameterGroupsList().stream().map(g -> new ParameterGroup(g.getName(), g.getParameterCount(),
                        dtype(g.getDtype()), g.getTrainable(), g.getHasMasterCopy())).toList(),
                model.getWatchedModulesList(), precision(r.getPrecision()), r.getTrainerInstance());
    }

    static PrecisionSetup precision(io.trainguard.api.grpc.v1.PrecisionSetup p) {
        return new PrecisionSetup(dtype(p.getParameterDtype()), dtype(p.getAutocastDtype()), p.getOptimizerName(),
                p.getOptimizerEps(), p.getLossScaler(), p.getMasterWeights(), p.getClippingConfigured(),
                p.getClippingEffective(), p.getFramework(),
                p.getOptimizerStateDtypesList().stream().map(ProtoMapper::dtype).toList());
    }

    static DType dtype(io.trainguard.api.grpc.v1.DType d) {
        return switch (d) {
            case D_TYPE_FLOAT32 -> DType.FLOAT32;
            case D_TYPE_FLOAT16 -> DType.FLOAT16;
            case D_TYPE_BFLOAT16 -> DType.BFLOAT16;
            case D_TYPE_FLOAT64 -> DType.FLOAT64;
            case D_TYPE_FLOAT8_E4M3 -> DType.FLOAT8_E4M3;
            case D_TYPE_FLOAT8_E5M2 -> DType.FLOAT8_E5M2;
            case D_TYPE_INT64 -> DType.INT64;
            case D_TYPE_INT32 -> DType.INT32;
            case D_TYPE_INT16 -> DType.INT16;
            case D_TYPE_INT8 -> DType.INT8;
            case D_TYPE_UINT8 -> DType.UINT8;
            case D_TYPE_BOOL -> DType.BOOL;
            default -> DType.UNKNOWN;
        };
    }

    /**
     * Only the fields the caller set override; the engine validates the merged result. Every
     * PolicyField is mapped here and in {@link #policy}: PolicySchemaTest sets each over gRPC.
     */
    public static UnaryOperator<Policy.Builder> overrides(io.trainguard.api.grpc.v1.Policy p) {
        return b -> {
            if (p.hasClipMode()) {
                b.clipMode = clipMode(p.getClipMode());
            }
            if (p.hasClipThreshold()) {
                b.clipThreshold = p.getClipThreshold();
            }
            if (p.hasMaxConsecutiveSkips()) {
                b.maxConsecutiveSkips = p.getMaxConsecutiveSkips();
            }
            if (p.hasValidationWarmupSteps()) {
                b.validationWarmupSteps = p.getValidationWarmupSteps();
            }
            if (p.hasValidationIntervalSteps()) {
                b.validationIntervalSteps = p.getValidationIntervalSteps();
            }
            if (p.hasSpikeZThreshold()) {
                b.spikeZThreshold = p.getSpikeZThreshold();
            }
            if (p.hasSpikeEmaAlpha()) {
                b.spikeEmaAlpha = p.getSpikeEmaAlpha();
            }
            if (p.hasSpikeWarmupSteps()) {
                b.spikeWarmupSteps = p.getSpikeWarmupSteps();
            }
            if (p.hasSpikeAction()) {
                b.spikeAction = action(p.getSpikeAction());
            }
            if (p.hasZclipZThreshold()) {
                b.zclipZThreshold = p.getZclipZThreshold();
            }
            if (p.hasZclipAlpha()) {
                b.zclipAlpha = p.getZclipAlpha();
            }
            if (p.hasAutoclipPercentile()) {
                b.autoclipPercentile = p.getAutoclipPercentile();
            }
            if (p.hasKnownGoodHealthySteps()) {
                b.knownGoodHealthySteps = p.getKnownGoodHealthySteps();
            }
            if (p.hasRollbackSkipBatches()) {
                b.rollbackSkipBatches = p.getRollbackSkipBatches();
            }
            if (p.hasRollbackLrFactor()) {
                b.rollbackLrFactor = p.getRollbackLrFactor();
            }
            if (p.hasRollbackRewarmSteps()) {
                b.rollbackRewarmSteps = p.getRollbackRewarmSteps();
            }
            if (p.hasMaxRollbacks()) {
                b.maxRollbacks = p.getMaxRollbacks();
            }
            if (p.hasRollbackWindowSteps()) {
                b.rollbackWindowSteps = p.getRollbackWindowSteps();
            }
            if (p.hasPreflightMode()) {
                b.preflightMode = auditMode(p.getPreflightMode());
            }
            if (p.hasHangFactor()) {
                b.hangFactor = p.getHangFactor();
            }
            if (p.hasHangMin()) {
                b.hangMin = duration(p.getHangMin());
            }
            if (p.hasHangMax()) {
                b.hangMax = duration(p.getHangMax());
            }
            if (p.hasCrossRankRtol()) {
                b.crossRankRtol = p.getCrossRankRtol();
            }
            if (p.hasDivergenceWindow()) {
                b.divergenceWindow = p.getDivergenceWindow();
            }
            if (p.hasDivergenceRatio()) {
                b.divergenceRatio = p.getDivergenceRatio();
            }
            if (p.hasRecoverySteps()) {
                b.recoverySteps = p.getRecoverySteps();
            }
            return b;
        };
    }

    static ClipMode clipMode(io.trainguard.api.grpc.v1.ClipMode m) {
        return switch (m) {
            case CLIP_MODE_OFF -> ClipMode.OFF;
            case CLIP_MODE_FIXED -> ClipMode.FIXED;
            case CLIP_MODE_ZSCORE -> ClipMode.ZSCORE;
            case CLIP_MODE_PERCENTILE -> ClipMode.PERCENTILE;
            default -> throw new InvalidRequestException("policy.clip_mode must be OFF, FIXED, ZSCORE or PERCENTILE");
        };
    }

    static AuditMode auditMode(io.trainguard.api.grpc.v1.AuditMode m) {
        return switch (m) {
            case AUDIT_MODE_OFF -> AuditMode.OFF;
            case AUDIT_MODE_WARN -> AuditMode.WARN;
            case AUDIT_MODE_REFUSE -> AuditMode.REFUSE;
            default -> throw new InvalidRequestException("policy.preflight_mode must be OFF, WARN or REFUSE");
        };
    }

    static Action action(io.trainguard.api.grpc.v1.Action a) {
        return switch (a) {
            case ACTION_APPLY -> Action.APPLY;
            case ACTION_CLIP -> Action.CLIP;
            case ACTION_SKIP -> Action.SKIP;
            case ACTION_ROLLBACK -> Action.ROLLBACK;
            case ACTION_HALT -> Action.HALT;
            default -> throw new InvalidRequestException("action must be set (APPLY, CLIP, SKIP, ROLLBACK or HALT)");
        };
    }

    static java.time.Duration duration(Duration d) {
        return java.time.Duration.ofSeconds(d.getSeconds(), d.getNanos());
    }

    public static StepReport report(io.trainguard.api.grpc.v1.StepReport r) {
        ModuleStats m = r.getModuleStats();
        boolean[] finite = new boolean[m.getFiniteCount()];
        for (int i = 0; i < finite.length; i++) {
            finite[i] = m.getFinite(i);
        }
        double[] maxAbs = new double[m.getMaxAbsCount()];
        for (int i = 0; i < maxAbs.length; i++) {
            maxAbs[i] = m.getMaxAbs(i);
        }
        double[] groups = new double[r.getGroupGradNormsCount()];
        for (int i = 0; i < groups.length; i++) {
            groups[i] = r.getGroupGradNorms(i);
        }
        return new StepReport(r.getRunId(), r.getRank(), r.getStep(), r.getLoss(), r.getLossAbsent(), r.getGradNorm(), groups,
                r.getLearningRate(), r.getLossScale(), m.getNamesList(), finite, maxAbs,
                r.hasStepTime() ? duration(r.getStepTime()) : java.time.Duration.ZERO, r.getDecidedLocally(),
                r.getSkippedByAgreement(), r.getAppliedClipThreshold());
    }

    public static Phase phase(io.trainguard.api.grpc.v1.Phase p) {
        return switch (p) {
            case PHASE_VALIDATION -> Phase.VALIDATION;
            case PHASE_CHECKPOINT_SAVE -> Phase.CHECKPOINT_SAVE;
            case PHASE_IDLE -> Phase.IDLE;
            default -> Phase.STEP;
        };
    }

    public static ValidationAudit audit(io.trainguard.api.grpc.v1.ValidationAudit a) {
        return new ValidationAudit(a.getParametersChanged(), a.getDtypeDeviceModeChanged(), a.getWiringChanged(),
                a.getRngChanged(), a.getDetailsList(), a.getRestored());
    }

    // ------------------------------------------------------------------ out

    public static io.trainguard.api.grpc.v1.Verdict verdict(Verdict v) {
        var b = io.trainguard.api.grpc.v1.Verdict.newBuilder()
                .setStep(v.step())
                .setAction(action(v.action()))
                .setClipThreshold(v.clipThreshold())
                .setValidationAllowed(v.validationAllowed())
                .setFirstNonfiniteModule(v.firstNonFiniteModule() == null ? "" : v.firstNonFiniteModule())
                .setRunState(state(v.runState()))
                .setBounds(bounds(v.bounds()));
        // Most verdicts have neither: an addAll of an empty list still copies the builder's list (step path)
        if (!v.reasons().isEmpty()) {
            b.addAllReasons(v.reasons());
        }
        if (!v.incidentIds().isEmpty()) {
            b.addAllIncidentIds(v.incidentIds());
        }
        if (v.rollback() != null) {
            b.setRollback(plan(v.rollback()));
        }
        return b.build();
    }

    static io.trainguard.api.grpc.v1.RollbackPlan plan(RollbackPlan p) {
        return io.trainguard.api.grpc.v1.RollbackPlan.newBuilder().setCheckpointId(p.checkpointId())
                .setCheckpointStep(p.checkpointStep()).addAllFiles(p.files()).setDataPosition(p.dataPosition())
                .setSkipBatches(p.skipBatches()).setLrFactor(p.lrFactor()).setRewarmSteps(p.rewarmSteps())
                .setAttempt(p.attempt()).build();
    }

    public static io.trainguard.api.grpc.v1.LocalBounds bounds(LocalBounds b) {
        return io.trainguard.api.grpc.v1.LocalBounds.newBuilder().setMaxGradNorm(b.maxGradNorm()).setMaxLoss(b.maxLoss())
                .setClipThreshold(b.clipThreshold()).setValidUntilStep(b.validUntilStep()).build();
    }

    public static io.trainguard.api.grpc.v1.Action action(Action a) {
        return switch (a) {
            case APPLY -> io.trainguard.api.grpc.v1.Action.ACTION_APPLY;
            case CLIP -> io.trainguard.api.grpc.v1.Action.ACTION_CLIP;
            case SKIP -> io.trainguard.api.grpc.v1.Action.ACTION_SKIP;
            case ROLLBACK -> io.trainguard.api.grpc.v1.Action.ACTION_ROLLBACK;
            case HALT -> io.trainguard.api.grpc.v1.Action.ACTION_HALT;
        };
    }

    public static io.trainguard.api.grpc.v1.RunState state(RunState s) {
        return switch (s) {
            case HEALTHY -> io.trainguard.api.grpc.v1.RunState.RUN_STATE_HEALTHY;
            case DEGRADED -> io.trainguard.api.grpc.v1.RunState.RUN_STATE_DEGRADED;
            case ROLLING_BACK -> io.trainguard.api.grpc.v1.RunState.RUN_STATE_ROLLING_BACK;
            case HALTED -> io.trainguard.api.grpc.v1.RunState.RUN_STATE_HALTED;
            case CLOSED -> io.trainguard.api.grpc.v1.RunState.RUN_STATE_CLOSED;
        };
    }

    public static io.trainguard.api.grpc.v1.Run run(RunSnapshot s) {
        return io.trainguard.api.grpc.v1.Run.newBuilder().setRunId(s.runId()).setWorldSize(s.worldSize())
                .setState(state(s.state())).setStateReason(s.stateReason()).setLastStep(s.lastStep())
                .setConsecutiveSkips(s.consecutiveSkips()).setRollbacks(s.rollbacks()).setPolicy(policy(s.policy()))
                .setCreatedTime(timestamp(s.createdTime())).setUpdatedTime(timestamp(s.updatedTime()))
                .setStepsReported(s.stepsReported()).build();
    }

    public static io.trainguard.api.grpc.v1.Policy policy(Policy p) {
        return io.trainguard.api.grpc.v1.Policy.newBuilder()
                .setClipMode(io.trainguard.api.grpc.v1.ClipMode.valueOf("CLIP_MODE_" + p.clipMode().name()))
                .setClipThreshold(p.clipThreshold()).setMaxConsecutiveSkips(p.maxConsecutiveSkips())
                .setValidationWarmupSteps(p.validationWarmupSteps()).setValidationIntervalSteps(p.validationIntervalSteps())
                .setSpikeZThreshold(p.spikeZThreshold()).setSpikeEmaAlpha(p.spikeEmaAlpha())
                .setSpikeWarmupSteps(p.spikeWarmupSteps()).setSpikeAction(action(p.spikeAction()))
                .setZclipZThreshold(p.zclipZThreshold()).setZclipAlpha(p.zclipAlpha()).setAutoclipPercentile(p.autoclipPercentile())
                .setKnownGoodHealthySteps(p.knownGoodHealthySteps()).setRollbackSkipBatches(p.rollbackSkipBatches())
                .setRollbackLrFactor(p.rollbackLrFactor()).setRollbackRewarmSteps(p.rollbackRewarmSteps())
                .setMaxRollbacks(p.maxRollbacks()).setRollbackWindowSteps(p.rollbackWindowSteps())
                .setPreflightMode(io.trainguard.api.grpc.v1.AuditMode.valueOf("AUDIT_MODE_" + p.preflightMode().name()))
                .setHangFactor(p.hangFactor()).setHangMin(duration(p.hangMin())).setHangMax(duration(p.hangMax()))
                .setCrossRankRtol(p.crossRankRtol()).setDivergenceWindow(p.divergenceWindow())
                .setDivergenceRatio(p.divergenceRatio()).setRecoverySteps(p.recoverySteps()).build();
    }

    public static io.trainguard.api.grpc.v1.Incident incident(Incident i) {
        return io.trainguard.api.grpc.v1.Incident.newBuilder().setIncidentId(i.id()).setRunId(i.runId()).setRank(i.rank())
                .setStep(i.step()).setKind(io.trainguard.api.grpc.v1.IncidentKind.valueOf("INCIDENT_KIND_" + i.kind().name()))
                .setSeverity(io.trainguard.api.grpc.v1.Severity.valueOf("SEVERITY_" + i.severity().name()))
                .setMessage(i.message()).setModule(i.module()).setTime(timestamp(i.time())).build();
    }

    public static io.trainguard.api.grpc.v1.AuditFinding finding(AuditFinding f) {
        return io.trainguard.api.grpc.v1.AuditFinding.newBuilder().setCode(f.code())
                .setSeverity(io.trainguard.api.grpc.v1.Severity.valueOf("SEVERITY_" + f.severity().name()))
                .setMessage(f.message()).build();
    }

    static Duration duration(java.time.Duration d) {
        return Duration.newBuilder().setSeconds(d.getSeconds()).setNanos(d.getNano()).build();
    }

    static Timestamp timestamp(Instant t) {
        return Timestamp.newBuilder().setSeconds(t.getEpochSecond()).setNanos(t.getNano()).build();
    }
}
