package io.trainguard.deploy;

import static io.trainguard.deploy.K8sRenders.COMPONENT;
import static io.trainguard.deploy.K8sRenders.ROOT;
import static io.trainguard.deploy.K8sRenders.podSpecsOf;
import static io.trainguard.deploy.K8sRenders.readAppProperties;
import static io.trainguard.deploy.K8sRenders.renderHelmValues;
import static io.trainguard.deploy.K8sRenders.renderKustomizations;
import static io.trainguard.deploy.K8sRenders.yamlDocs;
import static io.trainguard.deploy.PodSpecs.envName;
import static io.trainguard.deploy.PodSpecs.envOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The deployment the manifest tests check, loaded once per test JVM: the keys the sidecar reads
 * (application.properties and the {@code @ConfigMapping} interfaces), every render and every pod
 * spec that carries the sidecar; and what the sidecar in one of those pods will see.
 */
final class Deployment {
    static final Path CONFIG_SRC = ROOT.resolve("src/main/java/io/trainguard/config");
    static final Path HEALTH_SRC = ROOT.resolve("src/main/java/io/trainguard/health");
    static final Path AUTH_SRC = ROOT.resolve("src/main/java/io/trainguard/api/security");
    static final String TEMPLATE = "component sidecar.yaml";
    /** Quarkus' default management port when quarkus.management.port is not set. */
    static final int QUARKUS_MANAGEMENT_DEFAULT_PORT = 9000;
    /**
     * Keys the deployment sets for issue #14's Java side (bearer token). Accepted as unknown only
     * while that side has not landed, i.e. while the build has no management interface; from then
     * on they must be keys the sidecar reads, like every other.
     */
    static final Set<String> PENDING_SECURITY_KEYS = Set.of("trainguard.auth.token-file");

    static Map<String, String> appProperties;
    static Set<String> knownKeys;
    /** where (file or render) -> its YAML documents. */
    static final Map<String, List<Object>> rendered = new LinkedHashMap<>();
    /** where -> every pod spec found there that carries the trainguard sidecar. */
    static final Map<String, List<Map<String, Object>>> podSpecs = new LinkedHashMap<>();

    private Deployment() {
    }

    static synchronized void load() throws IOException {
        if (appProperties != null) {
            return;
        }
        Map<String, String> props = readAppProperties();
        knownKeys = new LinkedHashSet<>(props.keySet());
        knownKeys.addAll(ConfigMappingKeys.read(CONFIG_SRC));
        knownKeys.addAll(ConfigMappingKeys.read(AUTH_SRC)); // trainguard.auth.* (the bearer token)
        podSpecs.put(TEMPLATE, podSpecsOf(yamlDocs(Files.readString(COMPONENT.resolve("sidecar.yaml")))));
        renderKustomizations(rendered);
        renderHelmValues(rendered);
        rendered.forEach((where, docs) -> podSpecs.put(where, podSpecsOf(docs)));
        appProperties = props;
    }

    static boolean managementEnabled() {
        return "true".equals(appProperties.get("quarkus.management.enabled"));
    }

    static String resolveDefault(String value) {
        Matcher m = Pattern.compile("^\\$\\{[^:}]+:([^}]*)}$").matcher(value);
        return m.matches() ? m.group(1) : value;
    }

    static int listenPort(Map<String, Object> sidecar) {
        return Integer.parseInt(setting(sidecar, "trainguard.listen.port"));
    }

    /** The port Quarkus' management interface listens on: the env var, else the build's, else 9000. */
    static int managementPort(Map<String, Object> sidecar) {
        String env = envOf(sidecar).get("QUARKUS_MANAGEMENT_PORT");
        if (env != null) {
            return Integer.parseInt(env);
        }
        String configured = appProperties.get("quarkus.management.port");
        return configured == null ? QUARKUS_MANAGEMENT_DEFAULT_PORT : Integer.parseInt(resolveDefault(configured));
    }

    static boolean socketEnabled(Map<String, Object> sidecar) {
        return Boolean.parseBoolean(setting(sidecar, "trainguard.listen.socket-enabled"));
    }

    /** The value the sidecar sees: its env var if the manifest sets one, else the app default. */
    static String setting(Map<String, Object> sidecar, String key) {
        String env = envOf(sidecar).get(envName(key));
        if (env != null) {
            return env;
        }
        String dflt = appProperties.get(key);
        assertNotNull(dflt, "no default for " + key + " in application.properties and not set in the manifest");
        return dflt;
    }
}
