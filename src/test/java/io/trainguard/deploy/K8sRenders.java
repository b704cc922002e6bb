package io.trainguard.deploy;

import static io.trainguard.deploy.PodSpecs.list;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.IOException;
import java.io.StringReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import org.yaml.snakeyaml.LoaderOptions;
import org.yaml.snakeyaml.Yaml;
import org.yaml.snakeyaml.constructor.SafeConstructor;

/**
 * The deployment's files as data: the manifests, application.properties, and what kustomize and
 * helm render from them (when installed: scripts/validate-k8s.sh caches both), parsed into YAML
 * documents and the pod specs that carry the sidecar.
 */
final class K8sRenders {
    static final Path ROOT = Path.of("").toAbsolutePath();
    static final Path K8S = ROOT.resolve("k8s");
    static final Path COMPONENT = K8S.resolve("components/trainguard-sidecar");
    static final Path CHART = K8S.resolve("helm/trainguard");
    static final String SIDECAR = "trainguard";

    private K8sRenders() {
    }

    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> containersNamed(Object node, String name) {
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
    static void collectPodSpecs(Object node, List<Map<String, Object>> out) {
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

    static int podTemplateCount(List<Object> docs) {
        List<Map<String, Object>> pods = new ArrayList<>();
        docs.forEach(d -> collectPodSpecs(d, pods));
        return pods.size();
    }

    /** The pod specs that carry the sidecar; a render without any is an error. */
    static List<Map<String, Object>> podSpecsOf(List<Object> docs) {
        List<Map<String, Object>> pods = new ArrayList<>();
        docs.forEach(d -> collectPodSpecs(d, pods));
        List<Map<String, Object>> guarded = pods.stream()
                .filter(p -> list(p, "initContainers").stream().anyMatch(c -> SIDECAR.equals(c.get("name")))).toList();
        assertFalse(guarded.isEmpty(), "no pod with the trainguard sidecar found");
        return guarded;
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> firstOfKind(List<Object> docs, String kind) {
        return (Map<String, Object>) docs.stream().filter(d -> d instanceof Map<?, ?> m && kind.equals(m.get("kind")))
                .findFirst().orElseThrow(() -> new AssertionError("no " + kind));
    }

    static long countDirs(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.filter(Files::isDirectory).count();
        }
    }

    static void renderKustomizations(Map<String, List<Object>> rendered) throws IOException {
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

    static void renderHelmValues(Map<String, List<Object>> rendered) throws IOException {
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

    static String helmCommand() {
        return tool("helm");
    }

    static List<String> kustomizeCommand() {
        String kustomize = tool("kustomize");
        if (kustomize != null) {
            return List.of(kustomize, "build");
        }
        String kubectl = tool("kubectl");
        return kubectl == null ? null : List.of(kubectl, "kustomize");
    }

    /** scripts/validate-k8s.sh's cached copy first, then PATH. */
    static String tool(String name) {
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

    static String run(List<String> cmd) throws IOException {
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

    static Map<String, String> readAppProperties() throws IOException {
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

    static List<Path> k8sYamlFiles() throws IOException {
        try (Stream<Path> s = Files.walk(K8S)) {
            return s.filter(p -> p.toString().endsWith(".yaml")).sorted().toList();
        }
    }

    static List<Path> javaFiles(Path dir) throws IOException {
        if (!Files.isDirectory(dir)) {
            return List.of();
        }
        try (Stream<Path> s = Files.walk(dir)) {
            return s.filter(p -> p.toString().endsWith(".java")).sorted().toList();
        }
    }

    static List<Object> yamlDocs(String text) {
        List<Object> docs = new ArrayList<>();
        new Yaml(new SafeConstructor(new LoaderOptions())).loadAll(text).forEach(d -> {
            if (d != null) {
                docs.add(d);
            }
        });
        return docs;
    }
}
