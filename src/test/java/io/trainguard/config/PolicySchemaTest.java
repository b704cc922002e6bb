package io.trainguard.config;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Descriptors.FieldDescriptor;
import io.smallrye.config.WithDefault;
import io.trainguard.api.PolicySamples;
import io.trainguard.guard.InvalidRequestException;
import io.trainguard.guard.policy.Policy;
import io.trainguard.guard.policy.PolicyDiff;
import io.trainguard.guard.policy.PolicyField;
import java.io.IOException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.lang.reflect.RecordComponent;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/**
 * The policy is one table ({@link PolicyField}); every other place that lists its fields is checked
 * against it here, so a field missing anywhere (as zclip_alpha once was from the proto) fails the build.
 */
class PolicySchemaTest {

    private static Set<String> schemaJavaNames() {
        return Arrays.stream(PolicyField.values()).map(PolicyField::javaName).collect(Collectors.toCollection(TreeSet::new));
    }

    // Prevents: a field added to the Policy record (or its Builder) but not to the schema, or the reverse.
    @Test
    void policyRecordAndBuilder_fields_matchTheSchema() {
        Set<String> components = Arrays.stream(Policy.class.getRecordComponents()).map(RecordComponent::getName)
                .collect(Collectors.toCollection(TreeSet::new));
        assertEquals(schemaJavaNames(), components, "Policy record components vs PolicyField");
        Set<String> builder = Arrays.stream(Policy.Builder.class.getFields()).map(java.lang.reflect.Field::getName)
                .collect(Collectors.toCollection(TreeSet::new));
        assertEquals(schemaJavaNames(), builder, "Policy.Builder fields vs PolicyField");
    }

    // Prevents: a policy field gRPC can neither set nor read (zclip_alpha was missing from the proto).
    @Test
    void protoPolicy_descriptor_hasEveryFieldWithPresenceAndTheRightType() {
        var descriptor = io.trainguard.api.grpc.v1.Policy.getDescriptor();
        Set<String> proto = descriptor.getFields().stream().map(FieldDescriptor::getName).collect(Collectors.toCollection(TreeSet::new));
        Set<String> schema = Arrays.stream(PolicyField.values()).map(PolicyField::key).collect(Collectors.toCollection(TreeSet::new));
        assertEquals(schema, proto, "proto trainguard.v1.Policy fields vs PolicyField");
        for (PolicyField f : PolicyField.values()) {
            FieldDescriptor fd = descriptor.findFieldByName(f.key());
            assertTrue(fd.hasPresence(), f.key() + ": must be optional (a partial policy needs presence)");
            String expected = switch (f.kind()) {
                case DOUBLE -> "DOUBLE";
                case INT -> "INT32";
                case LONG -> "INT64";
                case DURATION -> "MESSAGE";
                case ENUM -> "ENUM";
            };
            assertEquals(expected, fd.getType().name(), f.key() + ": proto type");
            if (f.kind() == PolicyField.Kind.ENUM) {
                for (String value : f.allowed()) {
                    String prefix = fd.getEnumType().getValues().get(0).getName().replace("UNSPECIFIED", "");
                    assertTrue(fd.getEnumType().findValueByName(prefix + value) != null, f.key() + ": proto lacks " + prefix + value);
                }
            }
        }
    }

    // Prevents: a config key that does not exist, or whose @WithDefault disagrees with the documented default.
    @Test
    void configMapping_everyKeyAndDefault_matchesTheSchema() {
        Set<String> methods = Arrays.stream(TrainguardConfig.Policy.class.getDeclaredMethods()).map(Method::getName)
                .collect(Collectors.toCollection(TreeSet::new));
        assertEquals(schemaJavaNames(), methods, "TrainguardConfig.Policy methods vs PolicyField");
        for (Method m : TrainguardConfig.Policy.class.getDeclaredMethods()) {
            PolicyField f = PolicyField.named(m.getName());
            WithDefault d = m.getAnnotation(WithDefault.class);
            assertTrue(d != null, f.configKey() + " has no @WithDefault");
            assertEquals(f.parse(f.defaultValue()), f.parse(d.value()), f.configKey() + ": config default vs PolicyField default");
        }
    }

    // Prevents: EngineWiring dropping or crossing a configured value (the 26-argument positional call).
    @Test
    void engineWiringDefaults_everyConfiguredValue_reachesThePolicy() {
        Map<PolicyField, Object> samples = PolicySamples.samples(0);
        TrainguardConfig.Policy config = (TrainguardConfig.Policy) Proxy.newProxyInstance(getClass().getClassLoader(),
                new Class<?>[] {TrainguardConfig.Policy.class}, (proxy, method, args) -> samples.get(PolicyField.named(method.getName())));
        Policy p = EngineWiring.defaults(config);
        for (PolicyField f : PolicyField.values()) {
            assertEquals(samples.get(f), f.get(p), f.configKey());
        }
    }

    // Prevents: a bad configured default starting a sidecar that refuses every run, or running with it.
    @Test
    void engineWiringDefaults_infiniteThreshold_isRefusedNamingTheKey() {
        Map<PolicyField, Object> samples = PolicySamples.samples(0);
        samples.put(PolicyField.SPIKE_Z_THRESHOLD, Double.POSITIVE_INFINITY);
        TrainguardConfig.Policy config = (TrainguardConfig.Policy) Proxy.newProxyInstance(getClass().getClassLoader(),
                new Class<?>[] {TrainguardConfig.Policy.class}, (proxy, method, args) -> samples.get(PolicyField.named(method.getName())));
        var e = assertThrows(IllegalArgumentException.class, () -> EngineWiring.defaults(config));
        assertTrue(e.getMessage().contains("spike_z_threshold"), e.getMessage());
    }

    // Prevents: 1e308 or Infinity accepted as a threshold (a check silently off) instead of refused.
    @Test
    void validation_nonFiniteOrAbsurdNumber_isRefusedNamingTheKey() {
        for (PolicyField f : PolicyField.values()) {
            if (f.kind() != PolicyField.Kind.DOUBLE) {
                continue;
            }
            for (double bad : new double[] {Double.NaN, Double.POSITIVE_INFINITY, 1e308, -1}) {
                var e = assertThrows(InvalidRequestException.class, () -> {
                    Policy.Builder b = PolicyField.defaults().toBuilder();
                    f.set(b, bad);
                    b.build();
                }, f.key() + "=" + bad);
                assertTrue(e.getMessage().startsWith("policy: " + f.key() + " must be in "), e.getMessage());
            }
        }
        var hang = assertThrows(InvalidRequestException.class, () -> PolicyField.defaults().toBuilder().let(b -> {
            b.hangMin = java.time.Duration.ofHours(2);
            return b;
        }));
        assertTrue(hang.getMessage().contains("hang_min"), hang.getMessage());
    }

    // Prevents: a policy change journaled without the field that changed.
    @Test
    void policyDiff_everyField_isNamedWhenChanged() {
        Policy before = PolicyField.defaults();
        Policy.Builder b = before.toBuilder();
        PolicySamples.samples(0).forEach((f, v) -> f.set(b, v));
        String diff = PolicyDiff.describe(before, b.build());
        for (PolicyField f : PolicyField.values()) {
            assertTrue(diff.contains(f.javaName() + "="), f.javaName() + " missing from: " + diff);
        }
        assertEquals("no change", PolicyDiff.describe(before, before));
    }

    /** The docs' table, generated from the schema. */
    static String markdownTable() {
        StringBuilder s = new StringBuilder("| field (proto / JSON `javaName` / config `trainguard.policy.` kebab-case) | type | default "
                + "| valid range | unit | meaning |\n|---|---|---|---|---|---|\n");
        for (PolicyField f : PolicyField.values()) {
            s.append("| `").append(f.key()).append("` | ").append(f.kind().name().toLowerCase(java.util.Locale.ROOT))
                    .append(" | `").append(f.defaultValue()).append("` | ").append(f.rangeText()).append(" | ")
                    .append(f.unit()).append(" | ").append(f.description()).append(" |\n");
        }
        return s.toString();
    }

    // Prevents: docs/policy.md describing fields, defaults or ranges the sidecar does not have.
    @Test
    void docsPolicyTable_isTheSchema() throws IOException {
        Path doc = Path.of("docs/policy.md");
        String text = Files.readString(doc);
        String begin = "<!-- policy-fields:begin (generated by PolicySchemaTest from PolicyField) -->\n";
        String end = "<!-- policy-fields:end -->";
        String expected = markdownTable();
        Files.createDirectories(Path.of("target"));
        Files.writeString(Path.of("target/policy-table.md"), expected);
        int a = text.indexOf(begin);
        int b = text.indexOf(end);
        assertTrue(a >= 0 && b > a, "docs/policy.md lacks the markers " + begin.trim() + " ... " + end);
        assertEquals(expected, text.substring(a + begin.length(), b),
                "docs/policy.md's field table is stale: paste target/policy-table.md between the markers");
    }
}
