package io.trainguard.deploy;

import static io.trainguard.deploy.Deployment.TEMPLATE;
import static io.trainguard.deploy.Deployment.listenPort;
import static io.trainguard.deploy.Deployment.podSpecs;
import static io.trainguard.deploy.Deployment.setting;
import static io.trainguard.deploy.Deployment.socketEnabled;
import static io.trainguard.deploy.PodSpecs.effectiveUid;
import static io.trainguard.deploy.PodSpecs.envOf;
import static io.trainguard.deploy.PodSpecs.first;
import static io.trainguard.deploy.PodSpecs.list;
import static io.trainguard.deploy.PodSpecs.map;
import static io.trainguard.deploy.PodSpecs.mountAt;
import static io.trainguard.deploy.PodSpecs.sidecarOf;
import static io.trainguard.deploy.PodSpecs.trainerOf;
import static io.trainguard.deploy.PodSpecs.volumeDef;
import static io.trainguard.deploy.PodSpecs.volumeMountedAt;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.util.List;
import java.util.Map;

import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * How the sidecar is wired into every pod the manifests and the chart produce: the transport both
 * containers use (Unix socket or localhost), the token both read, the sidecar's hardening and
 * where its journal, checkpoints, cache and policy are mounted. Same pods as
 * {@link ManifestConsistencyTest}.
 */
class ManifestPodWiringTest {

    @BeforeAll
    static void load() throws IOException {
        Deployment.load();
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
}
