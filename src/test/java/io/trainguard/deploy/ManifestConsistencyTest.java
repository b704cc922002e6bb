package io.trainguard.deploy;

import static io.trainguard.deploy.Deployment.HEALTH_SRC;
import static io.trainguard.deploy.Deployment.PENDING_SECURITY_KEYS;
import static io.trainguard.deploy.Deployment.QUARKUS_MANAGEMENT_DEFAULT_PORT;
import static io.trainguard.deploy.Deployment.TEMPLATE;
import static io.trainguard.deploy.Deployment.appProperties;
import static io.trainguard.deploy.Deployment.knownKeys;
import static io.trainguard.deploy.Deployment.listenPort;
import static io.trainguard.deploy.Deployment.managementEnabled;
import static io.trainguard.deploy.Deployment.managementPort;
import static io.trainguard.deploy.Deployment.podSpecs;
import static io.trainguard.deploy.Deployment.rendered;
import static io.trainguard.deploy.Deployment.resolveDefault;
import static io.trainguard.deploy.Deployment.setting;
import static io.trainguard.deploy.K8sRenders.CHART;
import static io.trainguard.deploy.K8sRenders.COMPONENT;
import static io.trainguard.deploy.K8sRenders.K8S;
import static io.trainguard.deploy.K8sRenders.ROOT;
import static io.trainguard.deploy.K8sRenders.SIDECAR;
import static io.trainguard.deploy.K8sRenders.containersNamed;
import static io.trainguard.deploy.K8sRenders.countDirs;
import static io.trainguard.deploy.K8sRenders.firstOfKind;
import static io.trainguard.deploy.K8sRenders.helmCommand;
import static io.trainguard.deploy.K8sRenders.javaFiles;
import static io.trainguard.deploy.K8sRenders.k8sYamlFiles;
import static io.trainguard.deploy.K8sRenders.kustomizeCommand;
import static io.trainguard.deploy.K8sRenders.podTemplateCount;
import static io.trainguard.deploy.K8sRenders.yamlDocs;
import static io.trainguard.deploy.PodSpecs.envName;
import static io.trainguard.deploy.PodSpecs.envOf;
import static io.trainguard.deploy.PodSpecs.first;
import static io.trainguard.deploy.PodSpecs.httpProbePort;
import static io.trainguard.deploy.PodSpecs.list;
import static io.trainguard.deploy.PodSpecs.map;
import static io.trainguard.deploy.PodSpecs.namedPort;
import static io.trainguard.deploy.PodSpecs.probePath;
import static io.trainguard.deploy.PodSpecs.sidecarOf;
import static io.trainguard.deploy.PodSpecs.trainerOf;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.StringReader;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

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

    @BeforeAll
    static void load() throws IOException {
        Deployment.load();
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
}
