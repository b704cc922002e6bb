package io.trainguard.guard.policy;

import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.model.Action;
import io.trainguard.guard.model.AuditMode;
import io.trainguard.guard.model.ClipMode;
import java.time.Duration;
import java.util.EnumSet;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.function.BiConsumer;
import java.util.function.Function;

/**
 * The one table of policy fields: name, type, default, valid range, unit and meaning. Validation,
 * the policy diff, the REST patch and the docs' table are driven by it; the proto, the config
 * mapping and the Java record are checked against it by {@code PolicySchemaTest}, so a field
 * missing anywhere fails the build. Adding a field: a component of {@link Policy} (and its
 * Builder), a row here, the proto field, the config key; the test names whatever was forgotten.
 *
 * <p>Ranges are closed unless marked open; doubles must also be finite. Values beyond the ranges
 * are refused rather than used to turn a check off: "off" is said with a mode (clip_mode=OFF,
 * preflight_mode=OFF, cross_rank_rtol=0).
 */
public enum PolicyField {
    CLIP_MODE("clip_mode", Kind.ENUM, "OFF", "", "OFF, FIXED, ZSCORE (ZClip) or PERCENTILE (AutoClip)",
            Policy::clipMode, (b, v) -> b.clipMode = (ClipMode) v, EnumSet.allOf(ClipMode.class)),
    CLIP_THRESHOLD("clip_threshold", Kind.DOUBLE, "1.0", "grad norm", "FIXED mode: clip the global grad norm to this",
            Policy::clipThreshold, (b, v) -> b.clipThreshold = (Double) v, Range.open(0, 1e12)),
    MAX_CONSECUTIVE_SKIPS("max_consecutive_skips", Kind.INT, "3", "steps", "more skips in a row: ROLLBACK, or HALT",
            Policy::maxConsecutiveSkips, (b, v) -> b.maxConsecutiveSkips = (Integer) v, Range.closed(0, Integer.MAX_VALUE)),
    VALIDATION_WARMUP_STEPS("validation_warmup_steps", Kind.LONG, "100", "steps", "no validation before this step",
            Policy::validationWarmupSteps, (b, v) -> b.validationWarmupSteps = (Long) v, Range.closed(0, Long.MAX_VALUE)),
    VALIDATION_INTERVAL_STEPS("validation_interval_steps", Kind.LONG, "500", "steps",
            "then at most once per this many steps (from the last validation begun), only while HEALTHY",
            Policy::validationIntervalSteps, (b, v) -> b.validationIntervalSteps = (Long) v, Range.closed(1, Long.MAX_VALUE)),
    SPIKE_Z_THRESHOLD("spike_z_threshold", Kind.DOUBLE, "6.0", "sigma", "z-score of the loss / grad norm that is a spike",
            Policy::spikeZThreshold, (b, v) -> b.spikeZThreshold = (Double) v, Range.open(0, 1e9)),
    SPIKE_EMA_ALPHA("spike_ema_alpha", Kind.DOUBLE, "0.98", "", "EMA weight of the past in the spike statistics",
            Policy::spikeEmaAlpha, (b, v) -> b.spikeEmaAlpha = (Double) v, Range.openBoth(0, 1)),
    SPIKE_WARMUP_STEPS("spike_warmup_steps", Kind.INT, "64", "steps", "samples before spikes are judged",
            Policy::spikeWarmupSteps, (b, v) -> b.spikeWarmupSteps = (Integer) v, Range.closed(1, Integer.MAX_VALUE)),
    SPIKE_ACTION("spike_action", Kind.ENUM, "SKIP", "", "what a spike does: CLIP, SKIP or ROLLBACK",
            Policy::spikeAction, (b, v) -> b.spikeAction = (Action) v, EnumSet.of(Action.CLIP, Action.SKIP, Action.ROLLBACK)),
    ZCLIP_Z_THRESHOLD("zclip_z_threshold", Kind.DOUBLE, "2.5", "sigma", "ZSCORE mode: z above which the norm is clipped",
            Policy::zclipZThreshold, (b, v) -> b.zclipZThreshold = (Double) v, Range.open(0, 1000)),
    ZCLIP_ALPHA("zclip_alpha", Kind.DOUBLE, "0.97", "", "ZSCORE mode: EMA weight of the past",
            Policy::zclipAlpha, (b, v) -> b.zclipAlpha = (Double) v, Range.openBoth(0, 1)),
    AUTOCLIP_PERCENTILE("autoclip_percentile", Kind.DOUBLE, "10", "percentile",
            "PERCENTILE mode: clip to this percentile of the norms seen",
            Policy::autoclipPercentile, (b, v) -> b.autoclipPercentile = (Double) v, Range.open(0, 100)),
    KNOWN_GOOD_HEALTHY_STEPS("known_good_healthy_steps", Kind.INT, "50", "steps",
            "healthy steps after a verified checkpoint before it is known-good (a rollback target)",
            Policy::knownGoodHealthySteps, (b, v) -> b.knownGoodHealthySteps = (Integer) v, Range.closed(0, Integer.MAX_VALUE)),
    ROLLBACK_SKIP_BATCHES("rollback_skip_batches", Kind.LONG, "0", "batches",
            "extra batches skipped per rollback attempt (beyond checkpoint to trigger)",
            Policy::rollbackSkipBatches, (b, v) -> b.rollbackSkipBatches = (Long) v, Range.closed(0, Long.MAX_VALUE)),
    ROLLBACK_LR_FACTOR("rollback_lr_factor", Kind.DOUBLE, "0.5", "", "LR x factor^attempt after a rollback",
            Policy::rollbackLrFactor, (b, v) -> b.rollbackLrFactor = (Double) v, Range.open(0, 1)),
    ROLLBACK_REWARM_STEPS("rollback_rewarm_steps", Kind.LONG, "100", "steps", "LR re-warm length x attempt",
            Policy::rollbackRewarmSteps, (b, v) -> b.rollbackRewarmSteps = (Long) v, Range.closed(0, Long.MAX_VALUE)),
    MAX_ROLLBACKS("max_rollbacks", Kind.INT, "3", "rollbacks", "rollbacks within rollback_window_steps; then HALT",
            Policy::maxRollbacks, (b, v) -> b.maxRollbacks = (Integer) v, Range.closed(0, Integer.MAX_VALUE)),
    ROLLBACK_WINDOW_STEPS("rollback_window_steps", Kind.LONG, "1000", "steps",
            "healthy steps after which the rollback count starts again",
            Policy::rollbackWindowSteps, (b, v) -> b.rollbackWindowSteps = (Long) v, Range.closed(1, Long.MAX_VALUE)),
    PREFLIGHT_MODE("preflight_mode", Kind.ENUM, "REFUSE", "", "OFF, WARN, or REFUSE (ERROR findings refuse OpenRun)",
            Policy::preflightMode, (b, v) -> b.preflightMode = (AuditMode) v, EnumSet.allOf(AuditMode.class)),
    HANG_FACTOR("hang_factor", Kind.DOUBLE, "5.0", "x phase time", "a hang is this many times the learned phase time",
            Policy::hangFactor, (b, v) -> b.hangFactor = (Double) v, Range.open(1, 1e6)),
    HANG_MIN("hang_min", Kind.DURATION, "10m", "duration", "the hang allowance is never shorter (<= hang_max)",
            Policy::hangMin, (b, v) -> b.hangMin = (Duration) v, Range.closed(0, 366 * 86400)),
    HANG_MAX("hang_max", Kind.DURATION, "30m", "duration", "the hang allowance is never longer",
            Policy::hangMax, (b, v) -> b.hangMax = (Duration) v, Range.closed(0, 366 * 86400)),
    CROSS_RANK_RTOL("cross_rank_rtol", Kind.DOUBLE, "1e-6", "relative",
            "data-parallel ranks' grad norms must agree this closely (0 = off)",
            Policy::crossRankRtol, (b, v) -> b.crossRankRtol = (Double) v, Range.closed(0, 1)),
    DIVERGENCE_WINDOW("divergence_window", Kind.INT, "10", "steps", "steps the loss must stay diverged to count",
            Policy::divergenceWindow, (b, v) -> b.divergenceWindow = (Integer) v, Range.closed(1, Integer.MAX_VALUE)),
    DIVERGENCE_RATIO("divergence_ratio", Kind.DOUBLE, "2.0", "x best loss", "short-term loss this many times its best = diverged",
            Policy::divergenceRatio, (b, v) -> b.divergenceRatio = (Double) v, Range.open(1, 1e6)),
    RECOVERY_STEPS("recovery_steps", Kind.INT, "20", "steps", "healthy steps that bring DEGRADED back to HEALTHY",
            Policy::recoverySteps, (b, v) -> b.recoverySteps = (Integer) v, Range.closed(1, Integer.MAX_VALUE));

    /** The value types a field can have; durations are written like config ("30s", "5m") or ISO-8601. */
    public enum Kind { DOUBLE, INT, LONG, DURATION, ENUM }

    /**
     * Bounds of a numeric field (durations in seconds). {@code lowOpen} / {@code highOpen}: the bound
     * itself is outside.
     */
    public record Range(double low, boolean lowOpen, double high, boolean highOpen) {
        static Range closed(double low, double high) {
            return new Range(low, false, high, false);
        }

        /** (low, high]: the usual "must be > 0" with a sane ceiling. */
        static Range open(double low, double high) {
            return new Range(low, true, high, false);
        }

        static Range openBoth(double low, double high) {
            return new Range(low, true, high, true);
        }

        boolean contains(double v) {
            return Double.isFinite(v) && (lowOpen ? v > low : v >= low) && (highOpen ? v < high : v <= high);
        }

        @Override
        public String toString() {
            return (lowOpen ? "(" : "[") + number(low) + ", " + number(high) + (highOpen ? ")" : "]");
        }
    }

    private final String key;
    private final Kind kind;
    private final String defaultValue;
    private final String unit;
    private final String description;
    private final Function<Policy, Object> get;
    private final BiConsumer<Policy.Builder, Object> set;
    private final Range range;
    private final Set<? extends Enum<?>> allowed;

    PolicyField(String key, Kind kind, String defaultValue, String unit, String description, Function<Policy, Object> get,
                BiConsumer<Policy.Builder, Object> set, Range range) {
        this(key, kind, defaultValue, unit, description, get, set, range, Set.of());
    }

    PolicyField(String key, Kind kind, String defaultValue, String unit, String description, Function<Policy, Object> get,
                BiConsumer<Policy.Builder, Object> set, Set<? extends Enum<?>> allowed) {
        this(key, kind, defaultValue, unit, description, get, set, null, allowed);
    }

    PolicyField(String key, Kind kind, String defaultValue, String unit, String description, Function<Policy, Object> get,
                BiConsumer<Policy.Builder, Object> set, Range range, Set<? extends Enum<?>> allowed) {
        this.key = key;
        this.kind = kind;
        this.defaultValue = defaultValue;
        this.unit = unit;
        this.description = description;
        this.get = get;
        this.set = set;
        this.range = range;
        this.allowed = allowed;
    }

    /** snake_case, as in the proto and the Python client. */
    public String key() {
        return key;
    }

    /** camelCase, as in the Java record, REST JSON and (kebab-cased) the config keys. */
    public String javaName() {
        StringBuilder s = new StringBuilder();
        boolean upper = false;
        for (char c : key.toCharArray()) {
            if (c == '_') {
                upper = true;
            } else {
                s.append(upper ? Character.toUpperCase(c) : c);
                upper = false;
            }
        }
        return s.toString();
    }

    /** trainguard.policy.clip-threshold */
    public String configKey() {
        return "trainguard.policy." + key.replace('_', '-');
    }

    public Kind kind() {
        return kind;
    }

    public String defaultValue() {
        return defaultValue;
    }

    public String unit() {
        return unit;
    }

    public String description() {
        return description;
    }

    /** The numeric range, or null for an enum. */
    public Range range() {
        return range;
    }

    /** The allowed values of an enum field, in declaration order. */
    public List<String> allowed() {
        return allowed.stream().map(Enum::name).toList();
    }

    public Object get(Policy p) {
        return get.apply(p);
    }

    /** Sets a value of this field's Java type (Double, Integer, Long, Duration or the enum). */
    public void set(Policy.Builder b, Object value) {
        set.accept(b, value);
    }

    /** A human range for docs and messages: "(0, 1e+12]", "[0s, 366d]" or "CLIP, SKIP, ROLLBACK". */
    public String rangeText() {
        if (kind == Kind.ENUM) {
            return String.join(", ", allowed());
        }
        if (kind == Kind.DURATION) {
            return (range.lowOpen() ? "(" : "[") + number(range.low()) + "s, " + number(range.high() / 86400) + "d"
                    + (range.highOpen() ? ")" : "]");
        }
        return range.toString();
    }

    /** Parses text as config and JSON write it: numbers, enum names, durations as "30s", "5m" or "PT30S". */
    public Object parse(String text) {
        String t = text.trim();
        try {
            return switch (kind) {
                case DOUBLE -> Double.parseDouble(t);
                case INT -> Integer.parseInt(t);
                case LONG -> Long.parseLong(t);
                case DURATION -> parseDuration(t);
                case ENUM -> parseEnum(t);
            };
        } catch (RuntimeException e) {
            throw new InvalidRequestException("policy: " + key + " = '" + text + "' is not a valid " + typeName()
                    + " (allowed: " + rangeText() + ")");
        }
    }

    private Object parseEnum(String t) {
        String name = t.toUpperCase(Locale.ROOT);
        for (Enum<?> e : allowed) {
            if (e.name().equals(name)) {
                return e;
            }
        }
        throw new IllegalArgumentException(t);
    }

    private static Duration parseDuration(String t) {
        if (t.startsWith("P") || t.startsWith("p")) {
            return Duration.parse(t);
        }
        char unit = Character.toLowerCase(t.charAt(t.length() - 1));
        long n = Long.parseLong(t.substring(0, t.length() - (Character.isDigit(unit) ? 0 : 1)));
        return switch (unit) {
            case 'h' -> Duration.ofHours(n);
            case 'm' -> Duration.ofMinutes(n);
            case 's' -> Duration.ofSeconds(n);
            default -> {
                if (!Character.isDigit(unit)) {
                    throw new IllegalArgumentException(t);
                }
                yield Duration.ofSeconds(n);
            }
        };
    }

    private String typeName() {
        return switch (kind) {
            case DOUBLE -> "number";
            case INT, LONG -> "whole number";
            case DURATION -> "duration (30s, 5m, PT30S)";
            case ENUM -> "value";
        };
    }

    /** Null when {@code value} is acceptable, otherwise what to fix, naming the key. */
    String problem(Object value) {
        if (value == null) {
            return key + " must be set";
        }
        if (kind == Kind.ENUM) {
            return allowed.contains(value) ? null : key + " must be " + String.join(", ", allowed()) + ", got " + value;
        }
        double v = switch (kind) {
            case DURATION -> ((Duration) value).getSeconds() + ((Duration) value).getNano() / 1e9; // no toNanos(): it overflows past 292 years
            default -> ((Number) value).doubleValue();
        };
        if (range.contains(v)) {
            return null;
        }
        return key + " must be in " + rangeText() + ", got " + value
                + (Double.isFinite(v) ? "" : " (a threshold must be a finite number; to turn a check off use its mode)");
    }

    /** The one validation of a policy: every field in its range, then the rules across fields. */
    static void validate(Policy p) {
        for (PolicyField f : values()) {
            String problem = f.problem(f.get(p));
            if (problem != null) {
                throw new InvalidRequestException("policy: " + problem);
            }
        }
        if (p.hangMin().compareTo(p.hangMax()) > 0) {
            throw new InvalidRequestException("policy: hang_min (" + p.hangMin() + ") must be <= hang_max (" + p.hangMax() + ")");
        }
    }

    /** The policy made of every field's default (the sidecar's defaults when nothing is configured). */
    public static Policy defaults() {
        Policy.Builder b = Policy.Builder.empty();
        for (PolicyField f : values()) {
            f.set(b, f.parse(f.defaultValue));
        }
        return b.build();
    }

    /** The field named by snake_case key, camelCase Java name or kebab config key; null if none. */
    public static PolicyField named(String name) {
        for (PolicyField f : values()) {
            if (f.key.equals(name) || f.javaName().equals(name) || f.key.replace('_', '-').equals(name)) {
                return f;
            }
        }
        return null;
    }

    private static String number(double d) {
        if (d == Integer.MAX_VALUE || d == Long.MAX_VALUE) {
            return "max";
        }
        if (d == Math.rint(d) && Math.abs(d) < 1e7) {
            return Long.toString((long) d);
        }
        return Math.abs(d) >= 1e7 ? String.format(Locale.ROOT, "%.0e", d) : Double.toString(d);
    }
}
