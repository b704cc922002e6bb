package io.trainguard.deploy;

import static io.trainguard.deploy.K8sRenders.SIDECAR;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import io.smallrye.config.common.utils.StringUtil;

/** Reading one pod spec: its containers, env, probes, ports, mounts and volumes, failing with where. */
final class PodSpecs {
    private PodSpecs() {
    }

    static int httpProbePort(Map<String, Object> c, String probe) {
        Map<String, Object> get = map(map(c, probe), "httpGet");
        Object port = get.get("port");
        if (port instanceof Number n) {
            return n.intValue();
        }
        // A named port resolves against the probed container's own ports.
        return namedPort(c, (String) port);
    }

    static String probePath(Map<String, Object> c, String probe) {
        return (String) map(map(c, probe), "httpGet").get("path");
    }

    static int namedPort(Map<String, Object> c, String name) {
        for (Map<String, Object> p : list(c, "ports")) {
            if (name.equals(p.get("name"))) {
                return ((Number) p.get("containerPort")).intValue();
            }
        }
        fail("container " + c.get("name") + " has no port named " + name);
        return -1;
    }

    static Object effectiveUid(Map<String, Object> pod, Map<String, Object> c) {
        Object own = c.get("securityContext") == null ? null : map(c, "securityContext").get("runAsUser");
        return own != null ? own : (pod.get("securityContext") == null ? null : map(pod, "securityContext").get("runAsUser"));
    }

    static String volumeMountedAt(Map<String, Object> c, String path, String where) {
        return (String) mountAt(c, path, where).get("name");
    }

    static Map<String, Object> mountAt(Map<String, Object> c, String path, String where) {
        for (Map<String, Object> m : list(c, "volumeMounts")) {
            if (path.equals(m.get("mountPath"))) {
                return m;
            }
        }
        fail(where + ": container " + c.get("name") + " mounts nothing at " + path);
        return null;
    }

    static Map<String, Object> volumeDef(Map<String, Object> pod, String name) {
        for (Map<String, Object> v : list(pod, "volumes")) {
            if (name.equals(v.get("name"))) {
                return v;
            }
        }
        fail("pod has no volume " + name);
        return null;
    }

    static Map<String, Object> sidecarOf(Map<String, Object> pod, String where) {
        List<Map<String, Object>> found = list(pod, "initContainers").stream().filter(c -> SIDECAR.equals(c.get("name"))).toList();
        assertEquals(1, found.size(), where + ": expected exactly one init container named " + SIDECAR);
        return found.get(0);
    }

    /** The trainer is the pod's first container (the component's convention). */
    static Map<String, Object> trainerOf(Map<String, Object> pod, String where) {
        List<Map<String, Object>> containers = list(pod, "containers");
        assertFalse(containers.isEmpty(), where + ": pod has no containers");
        return containers.get(0);
    }

    static Map<String, String> envOf(Map<String, Object> c) {
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
    static Map<String, Object> map(Map<String, Object> m, String field) {
        Object v = m.get(field);
        assertTrue(v instanceof Map, "expected a mapping at " + field + " in " + m.keySet());
        return (Map<String, Object>) v;
    }

    @SuppressWarnings("unchecked")
    static List<Map<String, Object>> list(Map<String, Object> m, String field) {
        Object v = m.get(field);
        return v == null ? List.of() : (List<Map<String, Object>>) v;
    }

    static Map<String, Object> first(List<Map<String, Object>> l) {
        assertFalse(l.isEmpty(), "empty list");
        return l.get(0);
    }
}
