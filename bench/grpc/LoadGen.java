// A JVM load generator for bench/grpc/throughput.py --client java: the same StreamSteps load as the
// Python workers (one run, world_size N, one stream per rank, same grad norm for the same step on all
// ranks), with a client cheap enough (~10 µs of CPU a report instead of ~200 µs in CPython grpc.aio)
// that the 2 shared cores go to the sidecar. Run with the sidecar's own jars (grpc-java, protobuf and
// the generated io.trainguard.api.grpc.v1 classes):
//   java -cp '/tmp/bench-app/lib/main/*:/tmp/bench-app/app/*' bench/grpc/LoadGen.java \
//        --target 127.0.0.1:PORT --run ID --world N --mode max|rate --seconds S --warmup W --window K --rate R
// Protocol with the driver: prints "ready", reads the start instant (epoch seconds) from stdin, prints
// one JSON line with sent/recv/errors/measured/completed/cpu_s/lat_ms.
import com.google.protobuf.Duration;
import io.grpc.ManagedChannel;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.StreamObserver;
import io.trainguard.api.grpc.v1.AuditMode;
import io.trainguard.api.grpc.v1.DType;
import io.trainguard.api.grpc.v1.ModelDescription;
import io.trainguard.api.grpc.v1.ModuleStats;
import io.trainguard.api.grpc.v1.OpenRunRequest;
import io.trainguard.api.grpc.v1.ParameterGroup;
import io.trainguard.api.grpc.v1.Policy;
import io.trainguard.api.grpc.v1.PrecisionSetup;
import io.trainguard.api.grpc.v1.StepReport;
import io.trainguard.api.grpc.v1.StreamStepsRequest;
import io.trainguard.api.grpc.v1.StreamStepsResponse;
import io.trainguard.api.grpc.v1.TrainGuardServiceGrpc;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.lang.management.ManagementFactory;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;

public class LoadGen {
    static final String[] MODULES = new String[14];

    static {
        MODULES[0] = "embed";
        int k = 1;
        for (int i = 0; i < 6; i++) {
            MODULES[k++] = "blocks." + i + ".attn";
            MODULES[k++] = "blocks." + i + ".mlp";
        }
        MODULES[13] = "lm_head";
    }

    static double noise(double x) {
        double v = Math.sin(x * 12.9898 + 78.233) * 43758.5453;
        return v - Math.floor(v) - 0.5;
    }

    static StreamStepsRequest report(String run, int rank, long step) {
        double loss = 2.0 + 3.0 * Math.exp(-step / 5000.0) + 0.04 * noise(step);
        double gn = 0.45 + 0.02 * noise(step * 3 + 1);
        double lr = 3e-4 * Math.min(1.0, (step + 1) / 1000.0);
        double wobble = 1.0 + 0.2 * noise(step * 7 + rank);
        ModuleStats.Builder ms = ModuleStats.newBuilder();
        for (int i = 0; i < 14; i++) {
            ms.addFinite(true).addMaxAbs((1.0 + 0.1 * i) * wobble);
        }
        return StreamStepsRequest.newBuilder().setReport(StepReport.newBuilder().setRunId(run).setRank(rank).setStep(step)
                .setLoss(loss).setGradNorm(gn).setLearningRate(lr).setLossScale(1.0).addGroupGradNorms(gn * 0.99)
                .addGroupGradNorms(gn * 0.14).setModuleStats(ms).setStepTime(Duration.newBuilder().setNanos(250_000_000)))
                .build();
    }

    static OpenRunRequest open(String run, int rank, int world) {
        ModelDescription.Builder m = ModelDescription.newBuilder().setParameterCount(110_150_000)
                .addParameterGroups(ParameterGroup.newBuilder().setName("decay").setParameterCount(110_000_000)
                        .setDtype(DType.D_TYPE_FLOAT32).setTrainable(true))
                .addParameterGroups(ParameterGroup.newBuilder().setName("no_decay").setParameterCount(150_000)
                        .setDtype(DType.D_TYPE_FLOAT32).setTrainable(true));
        for (String s : MODULES) {
            m.addWatchedModules(s);
        }
        return OpenRunRequest.newBuilder().setRunId(run).setRank(rank).setWorldSize(world).setTrainerInstance("loadgen")
                .setPolicy(Policy.newBuilder().setPreflightMode(AuditMode.AUDIT_MODE_WARN)).setModel(m)
                .setPrecision(PrecisionSetup.newBuilder().setParameterDtype(DType.D_TYPE_FLOAT32)
                        .setAutocastDtype(DType.D_TYPE_BFLOAT16).setOptimizerName("AdamW").setOptimizerEps(1e-8)
                        .setClippingConfigured(true).setClippingEffective(true).setFramework("torch")
                        .addOptimizerStateDtypes(DType.D_TYPE_FLOAT32))
                .build();
    }

    /** One rank's stream; all mutable state is guarded by the instance lock. */
    static final class Rank implements StreamObserver<StreamStepsResponse> {
        final int rank;
        final String run;
        StreamObserver<StreamStepsRequest> out;
        final ArrayDeque<long[]> sent = new ArrayDeque<>(); // {scheduledNanos, step}
        long nextStep, nsent, nrecv, errors, measured, completed;
        long[] lat = new long[1 << 16];
        int nlat;
        boolean closedLoop, stopped;
        long measureFrom, measureTo;
        final CountDownLatch done = new CountDownLatch(1);

        Rank(String run, int rank) {
            this.run = run;
            this.rank = rank;
        }

        synchronized void send(long scheduled) {
            long step = nextStep++;
            sent.add(new long[] {scheduled, step});
            out.onNext(report(run, rank, step));
            nsent++;
        }

        @Override
        public synchronized void onNext(StreamStepsResponse r) {
            long now = System.nanoTime();
            long[] s = sent.poll();
            nrecv++;
            if (s == null || !r.getError().isEmpty() || r.getVerdict().getStep() != s[1]) {
                errors++;
            }
            if (now >= measureFrom && now < measureTo) {
                completed++;
            }
            if (s != null && s[0] >= measureFrom && s[0] < measureTo) {
                measured++;
                if (nlat == lat.length) {
                    lat = java.util.Arrays.copyOf(lat, lat.length * 2);
                }
                lat[nlat++] = now - s[0];
            }
            if (closedLoop) {
                if (now < measureTo) {
                    send(System.nanoTime());
                } else if (!stopped && sent.isEmpty()) {
                    stopped = true;
                    out.onCompleted();
                }
            }
        }

        @Override
        public void onError(Throwable t) {
            System.err.println("rank " + rank + ": " + t);
            synchronized (this) {
                errors++;
            }
            done.countDown();
        }

        @Override
        public void onCompleted() {
            done.countDown();
        }
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) {
            a.put(argv[i].replaceFirst("^--", ""), argv[i + 1]);
        }
        String[] hp = a.get("target").split(":");
        String run = a.get("run");
        int world = Integer.parseInt(a.get("world"));
        String mode = a.getOrDefault("mode", "max");
        double seconds = Double.parseDouble(a.getOrDefault("seconds", "10"));
        double warmup = Double.parseDouble(a.getOrDefault("warmup", "3"));
        int window = Integer.parseInt(a.getOrDefault("window", "4"));
        double rate = Double.parseDouble(a.getOrDefault("rate", "5000"));
        int channels = Integer.parseInt(a.getOrDefault("channels", "4"));

        List<ManagedChannel> chans = new ArrayList<>();
        for (int i = 0; i < channels; i++) {
            chans.add(NettyChannelBuilder.forAddress(hp[0], Integer.parseInt(hp[1])).usePlaintext().build());
        }
        List<Rank> ranks = new ArrayList<>();
        for (int r = 0; r < world; r++) {
            ManagedChannel ch = chans.get(r % channels);
            TrainGuardServiceGrpc.newBlockingStub(ch).withDeadlineAfter(30, TimeUnit.SECONDS).openRun(open(run, r, world));
            Rank rk = new Rank(run, r);
            rk.out = TrainGuardServiceGrpc.newStub(ch).streamSteps(rk);
            ranks.add(rk);
        }
        // JIT warm-up of the client's own message building (not sent).
        for (int i = 0; i < 20000; i++) {
            report(run, 0, i).getSerializedSize();
        }
        System.out.println("ready");
        System.out.flush();
        double startAt = Double.parseDouble(new BufferedReader(new InputStreamReader(System.in)).readLine().trim());
        long startNanos = System.nanoTime() + (long) ((startAt - System.currentTimeMillis() / 1000.0) * 1e9);
        long from = startNanos + (long) (warmup * 1e9);
        long to = from + (long) (seconds * 1e9);
        for (Rank rk : ranks) {
            rk.measureFrom = from;
            rk.measureTo = to;
            rk.closedLoop = mode.equals("max");
        }
        while (System.nanoTime() < startNanos) {
            LockSupport.parkNanos(100_000);
        }
        var os = (com.sun.management.OperatingSystemMXBean) ManagementFactory.getOperatingSystemMXBean();
        long cpu0 = os.getProcessCpuTime();
        if (mode.equals("max")) {
            for (Rank rk : ranks) {
                for (int i = 0; i < window; i++) {
                    rk.send(System.nanoTime());
                }
            }
        } else {
            // Open loop: send k goes to rank k % world at startNanos + k / rate.
            double interval = 1e9 / rate;
            for (long k = 0; ; k++) {
                long due = startNanos + (long) (k * interval);
                if (due >= to) {
                    break;
                }
                // Park, never spin: a spinning client would take a core from the sidecar it measures.
                // Late sends are not hidden: latency counts from the scheduled instant.
                long wait = due - System.nanoTime();
                if (wait > 0) {
                    LockSupport.parkNanos(wait);
                }
                ranks.get((int) (k % world)).send(due);
            }
            for (Rank rk : ranks) {
                synchronized (rk) {
                    rk.out.onCompleted();
                }
            }
        }
        for (Rank rk : ranks) {
            if (!rk.done.await(120, TimeUnit.SECONDS)) {
                System.err.println("rank " + rk.rank + " did not finish");
            }
        }
        long cpu1 = os.getProcessCpuTime();
        StringBuilder sb = new StringBuilder("{");
        long sent = 0, recv = 0, errors = 0, measured = 0, completed = 0;
        for (Rank rk : ranks) {
            sent += rk.nsent;
            recv += rk.nrecv;
            errors += rk.errors;
            measured += rk.measured;
            completed += rk.completed;
        }
        sb.append("\"sent\":").append(sent).append(",\"recv\":").append(recv).append(",\"errors\":").append(errors)
                .append(",\"measured\":").append(measured).append(",\"completed\":").append(completed)
                .append(",\"cpu_s\":").append((cpu1 - cpu0) / 1e9).append(",\"lat_ms\":[");
        boolean first = true;
        for (Rank rk : ranks) {
            for (int i = 0; i < rk.nlat; i++) {
                if (!first) {
                    sb.append(',');
                }
                first = false;
                sb.append(rk.lat[i] / 1000 / 1000.0);
            }
        }
        sb.append("]}");
        System.out.println(sb);
        for (ManagedChannel ch : chans) {
            ch.shutdownNow();
        }
        System.exit(0);
    }
}
