package io.trainguard.checkpoint;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.List;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** Checkpoints written by real Lightning, DCP (2 gloo ranks) and transformers, verified as registered sets. */
class FrameworkCheckpointTest {
    static Path root;
    static boolean written;
    static FileVerifier files;

    @BeforeAll
    static void write() throws Exception {
        root = Files.createTempDirectory("framework-ckpts");
        Process p = new ProcessBuilder("/opt/trainguard-venv/bin/python",
                Path.of("src/test/resources/torch/write_framework_checkpoints.py").toAbsolutePath().toString(),
                root.toString()).redirectErrorStream(true).redirectOutput(root.resolve("writer.log").toFile()).start();
        written = p.waitFor() == 0;
        files = new FileVerifier(root, 2, 8);
    }

    @AfterAll
    static void close() {
        files.close();
    }

    static VerificationResult verify(Path... paths) {
        assumeTrue(written, "the venv's torch/lightning/transformers could not write the checkpoints");
        return files.verifier.verifyNow("t", CheckpointFormat.SAFETENSORS,
                Stream.of(paths).map(p -> new CheckpointFileSpec(p.toString(), null, 0)).toList(), null);
    }

    static Path copy(String dir) throws Exception {
        Path src = root.resolve(dir);
        Path dst = Files.createTempDirectory(root, dir + "-");
        try (Stream<Path> s = Files.list(src)) {
            for (Path f : s.filter(Files::isRegularFile).toList()) {
                Files.copy(f, dst.resolve(f.getFileName()), StandardCopyOption.REPLACE_EXISTING);
            }
        }
        return dst;
    }

    @Test
    void verify_lightningCkpt_verifiedWithOptimizerState() {
        // prevents: a Lightning .ckpt (a torch.save of trainer state) left UNVERIFIABLE or half read
        VerificationResult r = verify(root.resolve("lightning/tiny.ckpt"));
        assertEquals(CheckpointState.VERIFIED, r.outcome(), r.reason());
        List<String> names = r.tensors().stream().map(t -> t.name()).toList();
        assertTrue(names.contains("state_dict.layer.weight") && names.contains("optimizer_states.0.state.0.exp_avg_sq"),
                names.toString());
    }

    @Test
    void verify_dcpDirectory_verifiedAndChunksCovered() {
        // prevents: a torch.distributed.checkpoint directory that cannot become a rollback target
        VerificationResult r = verify(root.resolve("dcp"));
        assertEquals(CheckpointState.VERIFIED, r.outcome(), r.reason());
        List<String> names = r.tensors().stream().map(t -> t.name()).sorted().toList();
        assertEquals(List.of("model.b[0]", "model.w[0, 0]", "model.w[4, 0]"), names);
    }

    @Test
    void verify_dcpShardMissing_rejected() throws Exception {
        // prevents: a DCP checkpoint with a rank's shard missing counted as known-good
        Path d = copy("dcp");
        Files.delete(d.resolve("__0_0.distcp"));
        VerificationResult r = verify(d);
        assertEquals(CheckpointState.REJECTED, r.outcome());
        assertTrue(r.reason().contains("__0_0.distcp") && r.reason().contains("incomplete"), r.reason());
    }

    @Test
    void verify_dcpShardTruncated_rejectedNamingTheChunkPastItsEnd() throws Exception {
        // prevents: a shard cut short by a full disk read past its end or counted as known-good
        Path d = copy("dcp");
        Path shard = d.resolve("__0_0.distcp");
        byte[] b = Files.readAllBytes(shard);
        Files.write(shard, java.util.Arrays.copyOf(b, b.length / 2));
        VerificationResult r = verify(d);
        assertEquals(CheckpointState.REJECTED, r.outcome());
        assertTrue(r.reason().startsWith("__0_0.distcp@") && r.reason().contains("-byte shard; the shard is truncated"),
                r.reason());
    }

    @Test
    void verify_dcpShardWithNaN_rejectedNamingTheChunk() throws Exception {
        // prevents: a NaN in one rank's shard passing because only the metadata was read
        Path d = copy("dcp");
        Path shard = d.resolve("__0_0.distcp");
        byte[] b = Files.readAllBytes(shard);
        // rank 0's chunk holds arange(16) as fp32: 5.0f = 0x40a00000 -> NaN 0x7fc00000
        for (int i = 0; i + 4 <= b.length; i++) {
            if (b[i] == 0 && b[i + 1] == 0 && b[i + 2] == (byte) 0xa0 && b[i + 3] == 0x40) {
                b[i + 2] = (byte) 0xc0;
                b[i + 3] = 0x7f;
                break;
            }
        }
        Files.write(shard, b);
        VerificationResult r = verify(d);
        assertEquals(CheckpointState.REJECTED, r.outcome());
        assertTrue(r.reason().contains("'model.w[0, 0]'") && r.reason().contains("1 NaN"), r.reason());
    }

    @Test
    void verify_hfShardedSafetensors_verifiedAgainstIndex() {
        // prevents: one shard of a sharded Hugging Face checkpoint verified as if it were the whole
        VerificationResult r = verify(root.resolve("hf"));
        assertEquals(CheckpointState.VERIFIED, r.outcome(), r.reason());
        assertTrue(r.tensors().stream().anyMatch(t -> t.name().equals("transformer.h.1.mlp.c_fc.weight")));
        VerificationResult viaIndex = verify(root.resolve("hf/model.safetensors.index.json"));
        assertEquals(CheckpointState.VERIFIED, viaIndex.outcome(), viaIndex.reason());
        assertEquals(r.tensors().size(), viaIndex.tensors().size());
    }

    @Test
    void verify_hfIndexNotMatchingShards_rejected() throws Exception {
        // prevents: an index naming tensors its shards do not hold (a mixed or partial save) accepted
        Path d = copy("hf");
        Path index = d.resolve("model.safetensors.index.json");
        Files.writeString(index, Files.readString(index).replace("\"weight_map\": {",
                "\"weight_map\": {\n    \"lm_head.extra\": \"model-00001-of-00007.safetensors\","));
        VerificationResult r = verify(d);
        assertEquals(CheckpointState.REJECTED, r.outcome());
        assertTrue(r.reason().contains("lm_head.extra") && r.reason().contains("does not match"), r.reason());
    }
}
