package io.trainguard.checkpoint;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.trainguard.tensor.scan.TensorStats;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Stream;

/**
 * The files a checkpoint consists of. A registered directory stands for the checkpoint files in
 * it (weights, optimizer and trainer state, a DCP directory's .metadata and shards, a Hugging Face
 * shard index and its shards); a shard index names its shards, which are verified with it.
 */
final class CheckpointFiles {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final List<String> CHECKPOINT_SUFFIXES = List.of(".safetensors", ".pt", ".pth", ".bin", ".ckpt",
            ".distcp", ".npy", ".npz", ".safetensors.index.json", ".bin.index.json");

    private CheckpointFiles() {
    }

    /**
     * A 0-dim ±Inf under Lightning's {@code callbacks.} state is a "no value yet" sentinel
     * (ModelCheckpoint's kth_value and best_model_score, EarlyStopping's best_score start at
     * ±inf), not a diverged value; NaN anywhere, and Inf in any other tensor, still rejects.
     */
    static boolean isSentinel(TensorStats s) {
        return s.name().startsWith("callbacks.") && s.shape().isEmpty() && s.nanCount() == 0;
    }

    static boolean isDcpMetadata(Path p) {
        return p.getFileName().toString().equals(".metadata");
    }

    static boolean isDcpShard(Path p) {
        return p.getFileName().toString().endsWith(".distcp");
    }

    static boolean isShardIndex(Path p) {
        return p.getFileName().toString().endsWith(".index.json");
    }

    /** Directories replaced by their checkpoint files (sorted); shards named by an index added. */
    static List<CheckpointFileSpec> expand(List<CheckpointFileSpec> files, PathPolicy paths) throws IOException {
        Set<String> out = new LinkedHashSet<>();
        List<CheckpointFileSpec> specs = new ArrayList<>();
        for (CheckpointFileSpec f : files) {
            Path p = paths.resolveFileOrDirectory(f.path());
            if (Files.isDirectory(p)) {
                try (Stream<Path> s = Files.list(p)) {
                    for (Path c : s.filter(Files::isRegularFile).sorted().toList()) {
                        String n = c.getFileName().toString();
                        if ((n.equals(".metadata") || CHECKPOINT_SUFFIXES.stream().anyMatch(n::endsWith))
                                && out.add(c.toString())) {
                            specs.add(new CheckpointFileSpec(c.toString(), null, 0));
                        }
                    }
                }
            } else if (out.add(p.toString())) {
                specs.add(f);
            }
        }
        for (CheckpointFileSpec f : List.copyOf(specs)) {
            Path p = Path.of(f.path());
            if (isShardIndex(p) && Files.isRegularFile(p)) {
                for (String shard : indexMap(p).values()) {
                    Path s = p.resolveSibling(shard);
                    if (out.add(s.toString())) {
                        specs.add(new CheckpointFileSpec(s.toString(), null, 0));
                    }
                }
            }
        }
        if (specs.isEmpty()) {
            throw new IOException("no checkpoint files (" + String.join(", ", CHECKPOINT_SUFFIXES)
                    + ", .metadata) in " + files);
        }
        return specs;
    }

    /** tensor name -> shard file name, from the index's weight_map. */
    static Map<String, String> indexMap(Path index) throws IOException {
        JsonNode root = JSON.readTree(index.toFile());
        JsonNode map = root == null ? null : root.get("weight_map");
        if (map == null || !map.isObject()) {
            throw new IOException(index.getFileName() + " has no weight_map object");
        }
        Map<String, String> m = new java.util.LinkedHashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = map.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            m.put(e.getKey(), e.getValue().asText());
        }
        return m;
    }

    /** Empty when every shard holds exactly the tensors the index assigns it, else what differs. */
    static String checkShardIndex(Path index, Map<Path, List<TensorStats>> verified) throws IOException {
        Map<String, String> map = indexMap(index);
        Map<String, Set<String>> want = new java.util.TreeMap<>();
        map.forEach((t, shard) -> want.computeIfAbsent(shard, k -> new TreeSet<>()).add(t));
        for (Map.Entry<String, Set<String>> e : want.entrySet()) {
            Path shard = index.resolveSibling(e.getKey());
            List<TensorStats> stats = verified.entrySet().stream()
                    .filter(v -> v.getKey().getFileName().equals(shard.getFileName())
                            && v.getKey().getParent().equals(index.getParent()))
                    .map(Map.Entry::getValue).findFirst().orElse(null);
            if (stats == null) {
                return index.getFileName() + " names shard " + e.getKey() + ", which was not verified with it";
            }
            Set<String> have = new TreeSet<>();
            stats.forEach(s -> have.add(s.name()));
            Set<String> missing = new TreeSet<>(e.getValue());
            missing.removeAll(have);
            Set<String> extra = new TreeSet<>(have);
            extra.removeAll(e.getValue());
            if (!missing.isEmpty() || !extra.isEmpty()) {
                return index.getFileName() + " does not match shard " + e.getKey() + ": "
                        + (missing.isEmpty() ? "" : "missing from the shard " + first(missing) + "; ")
                        + (extra.isEmpty() ? "" : "in the shard but not the index " + first(extra) + "; ")
                        + "the checkpoint was mixed from different saves";
            }
        }
        return "";
    }

    private static String first(Set<String> s) {
        return s.stream().limit(5).toList() + (s.size() > 5 ? " and " + (s.size() - 5) + " more" : "");
    }
}
