package io.trainguard.deploy;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.io.StringReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.yaml.snakeyaml.LoaderOptions;
import org.yaml.snakeyaml.Yaml;
import org.yaml.snakeyaml.constructor.SafeConstructor;

import io.smallrye.config.common.utils.StringUtil;

/**
 * The Kubernetes manifests, the Helm chart and the Dockerfiles must use the sidecar's real
 * configuration keys, ports, socket path, token file and health endpoints. A renamed config key
 * or a changed port otherwise only shows up on a cluster, as a sidecar that silently ignores its
 * setting or a probe that kills the pod.
 *
 * <p>Keys the sidecar reads = keys and {@code ${key:default}} references in application.properties
 * plus every leaf of the {@code @ConfigMapping} interfaces in src/main/java/io/trainguard/config.
 * Pods checked = the component's sidecar template (k8s/components/trainguard-sidecar/sidecar.yaml)
 * plus, when kustomize / helm are installed (scripts/validate-k8s.sh installs both), every pod
 * template of the kustomize build of the base, each overlay and each example, and of
 * {@code helm template} with each example values file. The trainer is the pod's first container.
 */
class ManifestConsistencyTest {

    private static final Path ROOT = Path.of("").toAbsolutePath();
    private static final Path K8S = ROOT.resolve("k8s");
    private static final Path COMPONENT = K8S.resolve("components/trainguard-sidecar");
    private static final Path CHART = K8S.resolve("helm/trainguard");
    private static final Path CONFIG_SRC = ROOT.resolve("src/main/java/io/trainguard/config");
    private static final Path HEALTH_SRC = ROOT.resolve("src/main/java/io/trainguard/health");
    private static final Path AUTH_SRC = ROOT.resolve("src/main/java/io/trainguard/api/security");
    private static final String SIDECAR = "trainguard";
    private static final String TEMPLATE = "component sidecar.yaml";
    /** Quarkus' default management port when quarkus.management.port is not set. */
    private static final int QUARKUS_MANAGEMENT_DEFAULT_PORT = 9000;
    /**
     * Keys the deployment sets for issue #14's Java side (bearer token). Accepted as unknown only
     * while that side has not landed, i.e. while the build has no management interface; from then
     * on they must be keys the sidecar reads, like every other.
     */
    private static final Set<String> PENDING_SECURITY_KEYS = Set.of("trainguard.auth.token-file");

    private static Map<String, String> appProperties;
    private static Set<String> knownKeys;
    /** where (file or render) -> its YAML documents. */
    private static final Map<String, List<Object>> rendered = new LinkedHashMap<>();
    /** where -> every pod spec found there that carries the trainguard sidecar. */
    private static final Map<String, List<Map<String, Object>>> podSpecs = new LinkedHashMap<>();

    @BeforeAll
    static void load() throws IOException {
        appProperties = readAppProperties();
        knownKeys = new LinkedHashSet<>(appProperties.keySet());
        knownKeys.addAll(ConfigMappingKeys.read(CONFIG_SRC));
        knownKeys.addAll(ConfigMappingKeys.read(AUTH_SRC)); // trainguard.auth.* (the bearer token)
        podSpecs.put(TEMPLATE, podSpecsOf(yamlDocs(Files.readString(COMPONENT.resolve("sidecar.yaml")))));
        renderKustomizations();
        renderHelmValues();
        rendered.forEach((where, docs) -> podSpecs.put(where, podSpecsOf(docs)));
    }

    // Prevents: an env var or policy key in k8s that the sidecar never reads (typo, renamed key).
    @Test
    void sidecarEnv_everyTrainguardVariable_isAKeyTheSidecarReads() throws IOException {
        Map<String, String> envToKey = new LinkedHashMap<>();
        knownKeys.forEach(k -> envToKey.put(envName(k), k));
        if (!managementEnabled()) {
            PENDING_SECURITY_KEYS.forEach(k -> envToKey.putIfAbsent(envName(k), k));
        }
        List<String> unknown = new ArrayList<>();
        Map<String, List<Object>> sources = new LinkedHashMap<>();
        for (Path file : k8sYamlFiles()) {
            if (!file.startsWith(CHART)) { // chart templates are Go templates: checked rendered
                sources.put(ROOT.relativize(file).toString(), yamlDocs(Files.readString(file)));
            }
        }
        sources.putAll(rendered);
        sources.forEach((where, docs) -> {
            for (Object doc : docs) {
                for (Map<String, Object> c : containersNamed(doc, SIDECAR)) {
                    envOf(c).keySet().stream()
                            .filter(n -> n.startsWith("TRAINGUARD_") && !envToKey.containsKey(n))
                            .forEach(n -> unknown.add(where + ": " + n));
                }
            }
        });
        for (String dockerfile : List.of("Dockerfile.native", "Dockerfile.jvm")) {
            Matcher m = Pattern.compile("\\b(TRAINGUARD_[A-Z0-9_]+)=").matcher(Files.readString(ROOT.resolve(dockerfile)));
            while (m.find()) {
                if (!envToKey.containsKey(m.group(1))) {
                    unknown.add(dockerfile + ": " + m.group(1));
                }
            }
        }
        assertTrue(unknown.isEmpty(), "TRAINGUARD_* variables the sidecar does not read " + unknown
                + "; known keys: " + knownKeys);
    }

    // Prevents: a policy key in the ConfigMap or the chart's values that silently falls back to the default.
    @Test
    void policy_everyKeyInComponentAndChartValues_isAKeyTheSidecarReads() throws IOException {
        Map<String, Set<String>> keysByFile = new LinkedHashMap<>();
        Properties policy = new Properties();
        policy.load(new StringReader(Files.readString(COMPONENT.resolve("policy/application.properties"))));
        assertFalse(policy.isEmpty(), "policy ConfigMap is empty");
        keysByFile.put("component policy", policy.stringPropertyNames());
        List<Path> valuesFiles = new ArrayList<>(List.of(CHART.resolve("values.yaml")));
        try (Stream<Path> s = Files.list(CHART.resolve("ci"))) {
            s.filter(p -> p.toString().endsWith(".yaml")).sorted().forEach(valuesFiles::add);
        }
        for (Path values : valuesFiles) {
            Object doc = yamlDocs(Files.readString(values)).stream().findFirst().orElse(Map.of());
            if (doc instanceof Map<?, ?> m && m.get("policy") instanceof Map<?, ?> p) {
                Set<String> keys = new LinkedHashSet<>();
                p.keySet().forEach(k -> keys.add("trainguard.policy." + k));
                keysByFile.put(ROOT.relativize(values).toString(), keys);
            }
        }
        assertTrue(keysByFile.containsKey("k8s/helm/trainguard/values.yaml"), "the chart's values.yaml has no policy");
        List<String> unknown = new ArrayList<>();
        keysByFile.forEach((file, keys) -> keys.stream().filter(k -> !knownKeys.contains(k)).sorted()
                .forEach(k -> unknown.add(file + ": " + k)));
        assertTrue(unknown.isEmpty(), "policy keys the sidecar does not read: " + unknown + "; known: " + knownKeys);
    }

    // Prevents: probes, trainer liveness, PodMonitor or NetworkPolicy on a port nobody listens on,
    // and gRPC/REST reachable from outside the pod (only the management port may be).
    @Test
    void ports_probesPodMonitorNetworkPolicyAndImages_useTheManagementPort() throws IOException {
        for (var entry : podSpecs.entrySet()) {
            for (Map<String, Object> pod : entry.getValue()) {
                String where = entry.getKey();
                Map<String, Object> sidecar = sidecarOf(pod, where);
                int management = managementPort(sidecar);
                assertNotEquals(listenPort(sidecar), management, where + ": management port = gRPC port");
                assertEquals(management, namedPort(sidecar, "management"), where + ": containerPort 'management'");
                for (String probe : List.of("startupProbe", "readinessProbe", "livenessProbe")) {
                    assertEquals(management, httpProbePort(sidecar, probe), where + ": sidecar " + probe + " port");
                }
                assertEquals(management, httpProbePort(trainerOf(pod, where), "livenessProbe"), where + ": trainer livenessProbe port");
                assertTrue(List.of("127.0.0.1", "localhost", "::1").contains(setting(sidecar, "trainguard.listen.host")),
                        where + ": gRPC/REST must listen on loopback only, not " + setting(sidecar, "trainguard.listen.host"));
                assertEquals("0.0.0.0", envOf(sidecar).get("QUARKUS_MANAGEMENT_HOST"), where + ": kubelet and Prometheus reach the pod IP");
            }
        }
        List<Object> docs = new ArrayList<>(yamlDocs(Files.readString(K8S.resolve("base/podmonitor.yaml"))));
        docs.addAll(yamlDocs(Files.readString(K8S.resolve("base/networkpolicy.yaml"))));
        rendered.values().forEach(docs::addAll);
        int management = managementPort(sidecarOf(podSpecs.get(TEMPLATE).get(0), TEMPLATE));
        int podMonitors = 0;
        int networkPolicies = 0;
        for (Object d : docs) {
            @SuppressWarnings("unchecked")
            Map<String, Object> doc = (Map<String, Object>) d;
            if ("PodMonitor".equals(doc.get("kind"))) {
                podMonitors++;
                Map<String, Object> endpoint = first(list(map(doc, "spec"), "podMetricsEndpoints"));
                assertEquals("management", endpoint.get("port"), "PodMonitor port name");
                assertEquals("/q/metrics", endpoint.get("path"), "PodMonitor path");
            } else if ("NetworkPolicy".equals(doc.get("kind"))) {
                networkPolicies++;
                for (Map<String, Object> rule : list(map(doc, "spec"), "ingress")) {
                    boolean fromOtherNamespaces = list(rule, "from").stream().anyMatch(f -> f.containsKey("namespaceSelector"));
                    if (fromOtherNamespaces) {
                        List<Object> ports = list(rule, "ports").stream().map(p -> p.get("port")).map(Object.class::cast).toList();
                        assertEquals(List.of(management), ports, "NetworkPolicy: other namespaces may reach the management port only");
                    }
                }
            }
        }
        assertTrue(podMonitors > 0 && networkPolicies > 0, "no PodMonitor / NetworkPolicy checked");
        for (String dockerfile : List.of("Dockerfile.native", "Dockerfile.jvm")) {
            assertTrue(Files.readString(ROOT.resolve(dockerfile)).contains("EXPOSE " + management),
                    dockerfile + " must EXPOSE the management port " + management);
        }
    }

    // Prevents: probes aimed where the build serves no health. The manifests point them at the
    // management interface, so the build must enable it (issue #14's Java side).
    @Test
    void managementInterface_isEnabledInTheBuild_whereTheProbesPoint() {
        Assumptions.assumeTrue(managementEnabled(),
                "quarkus.management.enabled is not yet true in application.properties (issue #14's Java side not merged)");
        int configured = appProperties.get("quarkus.management.port") == null ? QUARKUS_MANAGEMENT_DEFAULT_PORT
                : Integer.parseInt(resolveDefault(appProperties.get("quarkus.management.port")));
        assertEquals(QUARKUS_MANAGEMENT_DEFAULT_PORT, configured, "application.properties' management port vs manifests");
    }

    // Prevents: probes on endpoints that do not exist (404 = failed probe = restart loop).
    @Test
    void probes_paths_areTheSidecarsHealthEndpoints() {
        assertFalse(appProperties.containsKey("quarkus.http.non-application-root-path"), "health moved off /q");
        assertFalse(appProperties.containsKey("quarkus.smallrye-health.root-path"), "health moved off /q/health");
        for (var entry : podSpecs.entrySet()) {
            for (Map<String, Object> pod : entry.getValue()) {
                Map<String, Object> sidecar = sidecarOf(pod, entry.getKey());
                assertEquals("/q/health/started", probePath(sidecar, "startupProbe"), entry.getKey());
                assertEquals("/q/health/ready", probePath(sidecar, "readinessProbe"), entry.getKey());
                assertEquals("/q/health/live", probePath(sidecar, "livenessProbe"), entry.getKey());
                assertEquals("/q/health/group/trainer", probePath(trainerOf(pod, entry.getKey()), "livenessProbe"), entry.getKey());
            }
        }
    }

    // Prevents: the trainer liveness probe pointing at a health group the sidecar never declares.
    @Test
    void trainerHealthGroup_isDeclaredBySidecar() throws IOException {
        List<Path> checks = javaFiles(HEALTH_SRC);
        Assumptions.assumeFalse(checks.isEmpty(), "no health checks written yet in " + HEALTH_SRC);
        boolean declared = false;
        for (Path f : checks) {
            String src = Files.readString(f);
            declared |= src.contains("HealthGroup") && src.contains("\"trainer\"");
        }
        assertTrue(declared, "no @HealthGroup(\"trainer\") in " + HEALTH_SRC);
    }

    // Prevents: trainer and sidecar disagreeing on the transport (socket path, volume, UID).
    @Test
    void transport_socketOrLocalhost_matchesOnBothSides() {
        for (var entry : podSpecs.entrySet()) {
            for (Map<String, Object> pod : entry.getValue()) {
                String where = entry.getKey();
                Map<String, Object> sidecar = sidecarOf(pod, where);
                Map<String, Object> trainer = trainerOf(pod, where);
                String target = envOf(trainer).get("TRAINGUARD_TARGET");
                assertNotNull(target, where + ": trainer has no TRAINGUARD_TARGET");
                if (socketEnabled(sidecar)) {
                    String socket = setting(sidecar, "trainguard.listen.socket");
                    assertEquals("unix://" + socket, target, where + ": trainer target vs sidecar socket");
                    String dir = socket.substring(0, socket.lastIndexOf('/'));
                    String volume = volumeMountedAt(sidecar, dir, where);
                    assertEquals(volume, volumeMountedAt(trainer, dir, where), where + ": socket volume not shared");
                    assertTrue(volumeDef(pod, volume).containsKey("emptyDir"), where + ": socket volume must be an emptyDir");
                    // The socket is created 0755: only its owner can connect. (The component's template
                    // leaves the trainer's user to the pod it is added to: checked there.)
                    if (!TEMPLATE.equals(where)) {
                        assertEquals(effectiveUid(pod, sidecar), effectiveUid(pod, trainer), where + ": sidecar and trainer UIDs differ");
                    }
                } else {
                    assertEquals("localhost:" + listenPort(sidecar), target, where + ": TCP target");
                }
            }
        }
    }

    // Prevents: a token the sidecar requires but the trainer cannot read (every write refused), or
    // a token file path that is not where the Secret is mounted.
    @Test
    void token_secretMountedIntoBothContainers_atTheFileBothRead() {
        for (var entry : podSpecs.entrySet()) {
            for (Map<String, Object> pod : entry.getValue()) {
                String where = entry.getKey();
                Map<String, Object> sidecar = sidecarOf(pod, where);
                Map<String, Object> trainer = trainerOf(pod, where);
                String file = envOf(sidecar).get("TRAINGUARD_AUTH_TOKEN_FILE");
                assertNotNull(file, where + ": sidecar has no TRAINGUARD_AUTH_TOKEN_FILE");
                assertEquals(file, envOf(trainer).get("TRAINGUARD_TOKEN_FILE"), where + ": trainer's TRAINGUARD_TOKEN_FILE");
                String dir = file.substring(0, file.lastIndexOf('/'));
                String volume = volumeMountedAt(sidecar, dir, where);
                assertEquals(volume, volumeMountedAt(trainer, dir, where), where + ": token volume not shared");
                // /var/run is a symlink to /run in most images: a token dir there must not be the socket's.
                String socketDir = setting(sidecar, "trainguard.listen.socket").replaceFirst("/[^/]*$", "");
                assertNotEquals(socketDir.replaceFirst("^/var/run/", "/run/"), dir.replaceFirst("^/var/run/", "/run/"),
                        where + ": the token's read-only Secret volume would hide the socket directory");
                Map<String, Object> secret = map(volumeDef(pod, volume), "secret");
                Map<String, Object> item = first(list(secret, "items"));
                assertEquals("token", item.get("key"), where + ": Secret key");
                assertEquals(file.substring(dir.length() + 1), item.get("path"), where + ": file name in the Secret volume");
            }
        }
    }

    // Prevents: a sidecar that starts after the trainer, runs as root, or writes to its image.
    @Test
    void sidecar_isHardenedNativeSidecar() {
        for (var entry : podSpecs.entrySet()) {
            for (Map<String, Object> pod : entry.getValue()) {
                String where = entry.getKey();
                Map<String, Object> sidecar = sidecarOf(pod, where);
                assertEquals("Always", sidecar.get("restartPolicy"), where + ": not a native sidecar");
                assertNotNull(sidecar.get("startupProbe"), where + ": trainer would start before the sidecar is ready");
                Map<String, Object> sc = map(sidecar, "securityContext");
                assertEquals(Boolean.TRUE, sc.get("readOnlyRootFilesystem"), where);
                assertEquals(Boolean.FALSE, sc.get("allowPrivilegeEscalation"), where);
                assertEquals(Boolean.TRUE, sc.get("runAsNonRoot"), where);
                assertTrue(sc.get("runAsUser") instanceof Number n && n.longValue() > 0, where + ": sidecar runAsUser");
                assertEquals(List.of("ALL"), map(sc, "capabilities").get("drop"), where);
                assertEquals("RuntimeDefault", map(sc, "seccompProfile").get("type"), where);
                Map<String, Object> limits = map(map(sidecar, "resources"), "limits");
                assertNotNull(limits.get("memory"), where + ": sidecar memory limit");
                if (!TEMPLATE.equals(where)) {
                    assertTrue(pod.get("restartPolicy") == null || List.of("OnFailure", "Never").contains(pod.get("restartPolicy")), where);
                }
            }
        }
    }

    // Prevents: journal lost on restart, checkpoints writable by the sidecar, DJL writing to a read-only root.
    @Test
    void volumes_journalCheckpointsCacheAndPolicy_areWhereTheSidecarLooks() {
        for (var entry : podSpecs.entrySet()) {
            for (Map<String, Object> pod : entry.getValue()) {
                String where = entry.getKey();
                Map<String, Object> sidecar = sidecarOf(pod, where);
                String journal = setting(sidecar, "trainguard.journal.path");
                String journalVolume = volumeMountedAt(sidecar, journal.substring(0, journal.lastIndexOf('/')), where);
                Map<String, Object> journalDef = volumeDef(pod, journalVolume);
                // The base and its overlays keep the journal across pod replacements; the component
                // (and pods built with it) at least across container restarts.
                boolean mustPersist = where.startsWith("kustomize k8s/base") || where.startsWith("kustomize k8s/overlays");
                assertTrue(journalDef.containsKey("persistentVolumeClaim") || !mustPersist && journalDef.containsKey("emptyDir"),
                        where + ": journal must be on its own persistent volume" + (mustPersist ? "" : " or an emptyDir"));
                List<String> roots = List.of(setting(sidecar, "trainguard.checkpoint.roots").split(","));
                for (String root : roots) {
                    Map<String, Object> mount = mountAt(sidecar, root.trim(), where);
                    assertEquals(Boolean.TRUE, mount.get("readOnly"), where + ": checkpoints must be read-only in the sidecar");
                    assertFalse(mount.get("name").equals(journalVolume), where + ": journal shares the checkpoint volume");
                }
                String cache = setting(sidecar, "trainguard.tensor.djl-cache-dir");
                Map<String, Object> cacheMount = mountAt(sidecar, cache, where);
                assertFalse(Boolean.TRUE.equals(cacheMount.get("readOnly")), where + ": DJL cache must be writable");
                assertTrue(volumeDef(pod, (String) cacheMount.get("name")).containsKey("emptyDir"), where);
                String djlEnv = envOf(sidecar).get("DJL_CACHE_DIR");
                assertTrue(djlEnv == null || djlEnv.equals(cache), where + ": DJL_CACHE_DIR != trainguard.tensor.djl-cache-dir");
                assertTrue(mountAt(sidecar, "/tmp", where) != null, where + ": /tmp must be writable");
                String workDir = (String) sidecar.get("workingDir");
                assertEquals("/deployments", workDir, where + ": Quarkus reads config/ relative to the image's WORKDIR");
                Map<String, Object> policy = mountAt(sidecar, workDir + "/config", where);
                assertTrue(volumeDef(pod, (String) policy.get("name")).containsKey("configMap"), where + ": policy ConfigMap");
            }
        }
    }

    // Prevents: the image's libtorch and the Java side's pytorch-jni drifting apart.
    @Test
    void dockerfiles_pytorchVersionAndWorkdir_matchPomAndManifests() throws IOException {
        Matcher pom = Pattern.compile("<pytorch.version>([^<]+)</pytorch.version>").matcher(Files.readString(ROOT.resolve("pom.xml")));
        assertTrue(pom.find(), "pom.xml has no pytorch.version");
        for (String dockerfile : List.of("Dockerfile.native", "Dockerfile.jvm")) {
            String text = Files.readString(ROOT.resolve(dockerfile));
            assertTrue(text.contains("ARG PYTORCH_VERSION=" + pom.group(1)), dockerfile + " libtorch != pom pytorch.version " + pom.group(1));
            assertTrue(text.contains("WORKDIR /deployments"), dockerfile + " WORKDIR");
            assertTrue(text.contains("PYTORCH_LIBRARY_PATH=/opt/libtorch/lib"), dockerfile + " PYTORCH_LIBRARY_PATH");
        }
    }

    // Prevents: an overlay, example or values file that only looks right in its patches: each must
    // render, and the sidecar must land in every pod template of the examples.
    @Test
    void renders_everyKustomizationAndValuesFile_rendersWithTheSidecarInEveryPod() throws IOException {
        Assumptions.assumeTrue(kustomizeCommand() != null && helmCommand() != null,
                "kustomize and helm not installed (scripts/validate-k8s.sh installs them)");
        long expected = 1 + countDirs(K8S.resolve("overlays")) + countDirs(K8S.resolve("examples"));
        try (Stream<Path> s = Files.list(CHART.resolve("ci"))) {
            expected += s.filter(p -> p.toString().endsWith("-values.yaml")).count();
        }
        assertEquals(expected, rendered.size(), "renders: " + rendered.keySet());
        assertEquals(2, podSpecs.get("kustomize k8s/examples/pytorchjob").size(), "PyTorchJob: Master and Worker guarded");
        for (var entry : rendered.entrySet()) {
            assertEquals(podTemplateCount(entry.getValue()), podSpecs.get(entry.getKey()).size(),
                    entry.getKey() + ": a pod template without the trainguard sidecar");
        }
        Map<String, Object> spec = map(firstOfKind(rendered.get("kustomize k8s/overlays/multi-node"), "Job"), "spec");
        assertEquals("Indexed", spec.get("completionMode"), "multi-node: an Indexed Job, one rank per pod");
        assertTrue(((Number) spec.get("parallelism")).intValue() >= 2, "multi-node: several pods, each with its own sidecar");
    }

    // ----------------------------------------------------------------------------- helpers

    private static boolean managementEnabled() {
        return "true".equals(appProperties.get("quarkus.management.enabled"));
    }

    private static String resolveDefault(String value) {
        Matcher m = Pattern.compile("^\\$\\{[^:}]+:([^}]*)}$").matcher(value);
        return m.matches() ? m.group(1) : value;
    }

    private static int listenPort(Map<String, Object> sidecar) {
        return Integer.parseInt(setting(sidecar, "trainguard.listen.port"));
    }

    /** The port Quarkus' management interface listens on: the env var, else the build's, else 9000. */
    private static int managementPort(Map<String, Object> sidecar) {
        String env = envOf(sidecar).get("QUARKUS_MANAGEMENT_PORT");
        if (env != null) {
            return Integer.parseInt(env);
        }
        String configured = appProperties.get("quarkus.management.port");
        return configured == null ? QUARKUS_MANAGEMENT_DEFAULT_PORT : Integer.parseInt(resolveDefault(configured));
    }

    private static boolean socketEnabled(Map<String, Object> sidecar) {
        return Boolean.parseBoolean(setting(sidecar, "trainguard.listen.socket-enabled"));
    }

    /** The value the sidecar sees: its env var if the manifest sets one, else the app default. */
    private static String setting(Map<String, Object> sidecar, String key) {
        String env = envOf(sidecar).get(envName(key));
        if (env != null) {
            return env;
        }
        String dflt = appProperties.get(key);
        assertNotNull(dflt, "no default for " + key + " in application.properties and not set in the manifest");
        return dflt;
    }

    private static int httpProbePort(Map<String, Object> c, String probe) {
        Map<String, Object> get = map(map(c, probe), "httpGet");
        Object port = get.get("port");
        if (port instanceof Number n) {
            return n.intValue();
        }
        // A named port resolves against the probed container's own ports.
        return namedPort(c, (String) port);
    }

    private static String probePath(Map<String, Object> c, String probe) {
        return (String) map(map(c, probe), "httpGet").get("path");
    }

    private static int namedPort(Map<String, Object> c, String name) {
        for (Map<String, Object> p : list(c, "ports")) {
            if (name.equals(p.get("name"))) {
                return ((Number) p.get("containerPort")).intValue();
            }
        }
        fail("container " + c.get("name") + " has no port named " + name);
        return -1;
    }

    private static Object effectiveUid(Map<String, Object> pod, Map<String, Object> c) {
        Object own = c.get("securityContext") == null ? null : map(c, "securityContext").get("runAsUser");
        return own != null ? own : (pod.get("securityContext") == null ? null : map(pod, "securityContext").get("runAsUser"));
    }

    private static String volumeMountedAt(Map<String, Object> c, String path, String where) {
        return (String) mountAt(c, path, where).get("name");
    }

    private static Map<String, Object> mountAt(Map<String, Object> c, String path, String where) {
        for (Map<String, Object> m : list(c, "volumeMounts")) {
            if (path.equals(m.get("mountPath"))) {
                return m;
            }
        }
        fail(where + ": container " + c.get("name") + " mounts nothing at " + path);
        return null;
    }

    private static Map<String, Object> volumeDef(Map<String, Object> pod, String name) {
        for (Map<String, Object> v : list(pod, "volumes")) {
            if (name.equals(v.get("name"))) {
                return v;
            }
        }
        fail("pod has no volume " + name);
        return null;
    }

    private static Map<String, Object> sidecarOf(Map<String, Object> pod, String where) {
        List<Map<String, Object>> found = list(pod, "initContainers").stream().filter(c -> SIDECAR.equals(c.get("name"))).toList();
        assertEquals(1, found.size(), where + ": expected exactly one init container named " + SIDECAR);
        return found.get(0);
    }

    /** The trainer is the pod's first container (the component's convention). */
    private static Map<String, Object> trainerOf(Map<String, Object> pod, String where) {
        List<Map<String, Object>> containers = list(pod, "containers");
        assertFalse(containers.isEmpty(), where + ": pod has no containers");
        return containers.get(0);
    }

    private static Map<String, String> envOf(Map<String, Object> c) {
        Map<String, String> env = new LinkedHashMap<>();
        for (Map<String, Object> e : list(c, "env")) {
            String name = (String) e.get("name");
            assertFalse(env.containsKey(name), "duplicate env " + name + " in container " + c.get("name"));
            env.put(name, e.get("value") == null ? null : String.valueOf(e.get("value")));
        }
        return env;
    }

    /** MicroProfile Config's environment-variable form of a property name. */
    static String envName(String key) {
        return StringUtil.replaceNonAlphanumericByUnderscores(key).toUpperCase(java.util.Locale.ROOT);
    }

    @SuppressWarnings("unchecked")
    private static List<Map<String, Object>> containersNamed(Object node, String name) {
        List<Map<String, Object>> out = new ArrayList<>();
        if (node instanceof Map<?, ?> m) {
            for (String field : List.of("containers", "initContainers")) {
                if (m.get(field) instanceof List<?> l) {
                    l.stream().filter(c -> c instanceof Map<?, ?> cm && name.equals(cm.get("name")))
                            .forEach(c -> out.add((Map<String, Object>) c));
                }
            }
            m.values().forEach(v -> out.addAll(containersNamed(v, name)));
        } else if (node instanceof List<?> l) {
            l.forEach(v -> out.addAll(containersNamed(v, name)));
        }
        return out;
    }

    /** Every pod spec (a mapping with a containers list) nested anywhere: Job, JobSet, PyTorchJob... */
    @SuppressWarnings("unchecked")
    private static void collectPodSpecs(Object node, List<Map<String, Object>> out) {
        if (node instanceof Map<?, ?> m) {
            if (m.get("containers") instanceof List<?>) {
                out.add((Map<String, Object>) m);
                return;
            }
            m.values().forEach(v -> collectPodSpecs(v, out));
        } else if (node instanceof List<?> l) {
            l.forEach(v -> collectPodSpecs(v, out));
        }
    }

    private static int podTemplateCount(List<Object> docs) {
        List<Map<String, Object>> pods = new ArrayList<>();
        docs.forEach(d -> collectPodSpecs(d, pods));
        return pods.size();
    }

    /** The pod specs that carry the sidecar; a render without any is an error. */
    private static List<Map<String, Object>> podSpecsOf(List<Object> docs) {
        List<Map<String, Object>> pods = new ArrayList<>();
        docs.forEach(d -> collectPodSpecs(d, pods));
        List<Map<String, Object>> guarded = pods.stream()
                .filter(p -> list(p, "initContainers").stream().anyMatch(c -> SIDECAR.equals(c.get("name")))).toList();
        assertFalse(guarded.isEmpty(), "no pod with the trainguard sidecar found");
        return guarded;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> firstOfKind(List<Object> docs, String kind) {
        return (Map<String, Object>) docs.stream().filter(d -> d instanceof Map<?, ?> m && kind.equals(m.get("kind")))
                .findFirst().orElseThrow(() -> new AssertionError("no " + kind));
    }

    private static long countDirs(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.filter(Files::isDirectory).count();
        }
    }

    private static void renderKustomizations() throws IOException {
        List<String> cmd = kustomizeCommand();
        if (cmd == null) {
            return;
        }
        List<Path> dirs = new ArrayList<>(List.of(K8S.resolve("base")));
        for (String parent : List.of("overlays", "examples")) {
            try (Stream<Path> s = Files.list(K8S.resolve(parent))) {
                s.filter(Files::isDirectory).sorted().forEach(dirs::add);
            }
        }
        for (Path dir : dirs) {
            List<String> full = new ArrayList<>(cmd);
            full.add(dir.toString());
            rendered.put("kustomize " + ROOT.relativize(dir), yamlDocs(run(full)));
        }
    }

    private static void renderHelmValues() throws IOException {
        String helm = helmCommand();
        if (helm == null) {
            return;
        }
        List<Path> values;
        try (Stream<Path> s = Files.list(CHART.resolve("ci"))) {
            values = s.filter(p -> p.toString().endsWith("-values.yaml")).sorted().toList();
        }
        for (Path v : values) {
            String release = v.getFileName().toString().replace("-values.yaml", "");
            rendered.put("helm " + release, yamlDocs(run(List.of(helm, "template", release, CHART.toString(),
                    "--kube-version", "1.29.0", "-f", v.toString()))));
        }
    }

    private static String helmCommand() {
        return tool("helm");
    }

    private static List<String> kustomizeCommand() {
        String kustomize = tool("kustomize");
        if (kustomize != null) {
            return List.of(kustomize, "build");
        }
        String kubectl = tool("kubectl");
        return kubectl == null ? null : List.of(kubectl, "kustomize");
    }

    /** scripts/validate-k8s.sh's cached copy first, then PATH. */
    private static String tool(String name) {
        Path cached = Path.of(System.getProperty("user.home"), ".cache/trainguard/bin", name);
        if (Files.isExecutable(cached)) {
            return cached.toString();
        }
        for (String dir : System.getenv().getOrDefault("PATH", "").split(":")) {
            if (!dir.isEmpty() && Files.isExecutable(Path.of(dir, name))) {
                return Path.of(dir, name).toString();
            }
        }
        return null;
    }

    private static String run(List<String> cmd) throws IOException {
        ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true);
        Process p = pb.start();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        try {
            if (!p.waitFor(60, TimeUnit.SECONDS) || p.exitValue() != 0) {
                fail(String.join(" ", cmd) + " failed:\n" + out);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IOException(e);
        }
        return out;
    }

    private static Map<String, String> readAppProperties() throws IOException {
        String text = Files.readString(ROOT.resolve("src/main/resources/application.properties"));
        Properties props = new Properties();
        props.load(new StringReader(text));
        Map<String, String> out = new LinkedHashMap<>();
        for (String k : props.stringPropertyNames()) {
            if (!k.startsWith("%")) { // %test.x=... is a profile override of x, not a separate key
                out.put(k, props.getProperty(k));
            }
        }
        // ${trainguard.listen.port:7474}: the referenced key is read, with that default.
        Matcher ref = Pattern.compile("\\$\\{([a-zA-Z0-9._-]+)(?::([^}]*))?}").matcher(text);
        while (ref.find()) {
            out.putIfAbsent(ref.group(1), ref.group(2));
        }
        return out;
    }

    private static List<Path> k8sYamlFiles() throws IOException {
        try (Stream<Path> s = Files.walk(K8S)) {
            return s.filter(p -> p.toString().endsWith(".yaml")).sorted().toList();
        }
    }

    private static List<Path> javaFiles(Path dir) throws IOException {
        if (!Files.isDirectory(dir)) {
            return List.of();
        }
        try (Stream<Path> s = Files.walk(dir)) {
            return s.filter(p -> p.toString().endsWith(".java")).sorted().toList();
        }
    }

    private static List<Object> yamlDocs(String text) {
        List<Object> docs = new ArrayList<>();
        new Yaml(new SafeConstructor(new LoaderOptions())).loadAll(text).forEach(d -> {
            if (d != null) {
                docs.add(d);
            }
        });
        return docs;
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> map(Map<String, Object> m, String field) {
        Object v = m.get(field);
        assertTrue(v instanceof Map, "expected a mapping at " + field + " in " + m.keySet());
        return (Map<String, Object>) v;
    }

    @SuppressWarnings("unchecked")
    private static List<Map<String, Object>> list(Map<String, Object> m, String field) {
        Object v = m.get(field);
        return v == null ? List.of() : (List<Map<String, Object>>) v;
    }

    private static Map<String, Object> first(List<Map<String, Object>> l) {
        assertFalse(l.isEmpty(), "empty list");
        return l.get(0);
    }

    /**
     * Leaf keys of the {@code @ConfigMapping} interfaces, read from their source: method
     * {@code clipThreshold()} in a mapping with prefix {@code trainguard.policy} is key
     * {@code trainguard.policy.clip-threshold}; {@code @WithName} overrides the segment, a method
     * returning another config interface is a group, {@code @WithParentName} adds no segment.
     */
    static final class ConfigMappingKeys {
        private static final Pattern PREFIX = Pattern.compile("@ConfigMapping\\s*\\(\\s*prefix\\s*=\\s*\"([^\"]+)\"");
        private static final Pattern INTERFACE = Pattern.compile("\\binterface\\s+(\\w+)");
        private static final Pattern METHOD = Pattern.compile("(?:public )?([\\w.]+(?:<[^()]*>)?(?:\\[])?) (\\w+) ?\\( ?\\)");
        private static final Pattern ANNOTATION = Pattern.compile("@[\\w.]+(?:\\s*\\((?:[^()\"]|\"(?:[^\"\\\\]|\\\\.)*\")*\\))?");
        private static final Pattern WITH_NAME = Pattern.compile("@WithName\\s*\\(\\s*\"([^\"]+)\"");

        record Method(String type, String name, String withName, boolean parentName) {
        }

        static Set<String> read(Path dir) throws IOException {
            Map<String, List<Method>> interfaces = new LinkedHashMap<>();
            Map<String, String> roots = new LinkedHashMap<>();
            for (Path f : javaFiles(dir)) {
                parse(Files.readString(f), interfaces, roots);
            }
            Set<String> keys = new LinkedHashSet<>();
            roots.forEach((iface, prefix) -> collect(iface, prefix, interfaces, keys, 0));
            return keys;
        }

        private static void parse(String src, Map<String, List<Method>> interfaces, Map<String, String> roots) {
            // Split into chunks ending at '{', '}' or ';' (string literals and comments skipped):
            // a chunk before '{' is a declaration header, one before ';' a member.
            String code = src;
            List<Object[]> stack = new ArrayList<>(); // (interface name, depth of its body)
            int depth = 0;
            StringBuilder chunk = new StringBuilder();
            boolean inString = false;
            for (int i = 0; i < code.length(); i++) {
                char ch = code.charAt(i);
                if (inString) {
                    chunk.append(ch);
                    if (ch == '\\') {
                        chunk.append(code.charAt(++i));
                    } else if (ch == '"') {
                        inString = false;
                    }
                    continue;
                }
                if (ch == '/' && i + 1 < code.length() && code.charAt(i + 1) == '/') {
                    int eol = code.indexOf('\n', i);
                    i = eol < 0 ? code.length() : eol;
                } else if (ch == '/' && i + 1 < code.length() && code.charAt(i + 1) == '*') {
                    int end = code.indexOf("*/", i + 2);
                    i = end < 0 ? code.length() : end + 1;
                } else if (ch == '"') {
                    inString = true;
                    chunk.append(ch);
                } else if (ch == '{') {
                    depth++;
                    Matcher iface = INTERFACE.matcher(chunk);
                    if (iface.find() && !chunk.toString().contains("@interface")) {
                        interfaces.putIfAbsent(iface.group(1), new ArrayList<>());
                        stack.add(new Object[] { iface.group(1), depth });
                        Matcher prefix = PREFIX.matcher(chunk);
                        if (prefix.find()) {
                            roots.put(iface.group(1), prefix.group(1));
                        }
                    }
                    chunk.setLength(0);
                } else if (ch == '}') {
                    if (!stack.isEmpty() && depth == (int) stack.get(stack.size() - 1)[1]) {
                        stack.remove(stack.size() - 1);
                    }
                    depth--;
                    chunk.setLength(0);
                } else if (ch == ';') {
                    if (!stack.isEmpty() && depth == (int) stack.get(stack.size() - 1)[1]) {
                        String member = chunk.toString();
                        Matcher withName = WITH_NAME.matcher(member);
                        String name = withName.find() ? withName.group(1) : null;
                        String bare = ANNOTATION.matcher(member).replaceAll(" ").replaceAll("\\s+", " ").trim();
                        Matcher m = METHOD.matcher(bare);
                        if (m.matches()) {
                            interfaces.get((String) stack.get(stack.size() - 1)[0])
                                    .add(new Method(m.group(1), m.group(2), name, member.contains("@WithParentName")));
                        }
                    }
                    chunk.setLength(0);
                } else {
                    chunk.append(ch);
                }
            }
        }

        private static void collect(String iface, String prefix, Map<String, List<Method>> interfaces, Set<String> keys, int level) {
            if (level > 10) {
                return;
            }
            for (Method m : interfaces.getOrDefault(iface, List.of())) {
                String segment = m.withName() != null ? m.withName() : kebab(m.name());
                String key = m.parentName() ? prefix : prefix + "." + segment;
                String group = groupType(m.type(), interfaces);
                if (group != null) {
                    collect(group, key, interfaces, keys, level + 1);
                } else {
                    keys.add(key);
                }
            }
        }

        private static String groupType(String type, Map<String, List<Method>> interfaces) {
            String inner = type.replaceAll("^(?:java\\.util\\.)?Optional<(.*)>$", "$1");
            String simple = inner.substring(inner.lastIndexOf('.') + 1);
            return interfaces.containsKey(simple) ? simple : null;
        }

        /** SmallRye's own KEBAB_CASE naming (spikeZThreshold -> spike-z-threshold). */
        static String kebab(String camel) {
            return StringUtil.skewer(camel);
        }
    }
}
