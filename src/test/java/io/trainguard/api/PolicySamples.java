package io.trainguard.api;

import com.google.protobuf.Descriptors.EnumValueDescriptor;
import com.google.protobuf.Descriptors.FieldDescriptor;
import io.trainguard.guard.policy.PolicyField;
import java.time.Duration;
import java.util.EnumMap;
import java.util.List;
import java.util.Map;

/**
 * Valid, non-default values for every policy field, and generic (descriptor-driven) conversion to
 * and from the proto Policy, so tests check ProtoMapper without using it.
 */
public final class PolicySamples {
    private PolicySamples() {
    }

    /** A valid value of {@code f} different from its default; {@code variant} 0, 1, 2 give different values. */
    public static Object sample(PolicyField f, int variant) {
        return switch (f.kind()) {
            case DOUBLE -> {
                double low = f.range().low();
                double span = Math.min(f.range().high(), low + 10) - low;
                yield low + span * (0.3 + 0.1 * variant);
            }
            case INT -> (int) f.range().low() + 7 + variant;
            case LONG -> (long) f.range().low() + 7 + variant;
            case DURATION -> Duration.ofSeconds(420 + 60L * variant); // differs from every default (hang_min 10m, hang_max 30m)
            case ENUM -> {
                List<String> names = f.allowed().stream().filter(n -> !n.equals(f.defaultValue())).toList();
                yield f.parse(names.get(variant % names.size()));
            }
        };
    }

    public static Map<PolicyField, Object> samples(int variant) {
        Map<PolicyField, Object> out = new EnumMap<>(PolicyField.class);
        for (PolicyField f : PolicyField.values()) {
            out.put(f, sample(f, variant));
        }
        return out;
    }

    /** Config text of a value, as application.properties would hold it. */
    public static String configText(Object v) {
        return v instanceof Duration d ? d.toSeconds() + "s" : String.valueOf(v);
    }

    public static io.trainguard.api.grpc.v1.Policy toProto(Map<PolicyField, Object> values) {
        var b = io.trainguard.api.grpc.v1.Policy.newBuilder();
        var descriptor = io.trainguard.api.grpc.v1.Policy.getDescriptor();
        for (var e : values.entrySet()) {
            FieldDescriptor fd = descriptor.findFieldByName(e.getKey().key());
            Object v = e.getValue();
            if (v instanceof Duration d) {
                b.setField(fd, com.google.protobuf.Duration.newBuilder().setSeconds(d.getSeconds()).setNanos(d.getNano()).build());
            } else if (v instanceof Enum<?> en) {
                String prefix = fd.getEnumType().getValues().get(0).getName().replace("UNSPECIFIED", "");
                b.setField(fd, fd.getEnumType().findValueByName(prefix + en.name()));
            } else {
                b.setField(fd, v);
            }
        }
        return b.build();
    }

    /** Every field the proto carries, as the schema's Java values; a field the proto lacks is absent. */
    public static Map<PolicyField, Object> fromProto(io.trainguard.api.grpc.v1.Policy p) {
        Map<PolicyField, Object> out = new EnumMap<>(PolicyField.class);
        for (PolicyField f : PolicyField.values()) {
            FieldDescriptor fd = p.getDescriptorForType().findFieldByName(f.key());
            if (fd == null || !p.hasField(fd)) {
                continue;
            }
            Object v = p.getField(fd);
            if (v instanceof com.google.protobuf.Duration d) {
                out.put(f, Duration.ofSeconds(d.getSeconds(), d.getNanos()));
            } else if (v instanceof EnumValueDescriptor ev) {
                String prefix = ev.getType().getValues().get(0).getName().replace("UNSPECIFIED", "");
                out.put(f, f.parse(ev.getName().substring(prefix.length())));
            } else {
                out.put(f, v);
            }
        }
        return out;
    }
}
