package io.trainguard.store;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * One rank's steps pre-aggregated in buckets of {@link #BASE} steps, kept in memory and extended
 * with the rows written since the last read. A whole-run chart of 10^6 steps then merges ~16k
 * small aggregates instead of reading 10^6 rows (seconds in SQLite). Aggregates are min, max, sum
 * and counts, so re-reported steps (after a rollback) merge correctly in any order.
 */
final class Rollup {
    static final int BASE = 64;

    private static final class Agg {
        long firstStep = Long.MAX_VALUE;
        long lastStep = Long.MIN_VALUE;
        int reports;
        double lossMin = Double.POSITIVE_INFINITY;
        double lossMax = Double.NEGATIVE_INFINITY;
        double lossSum;
        int lossFinite;
        double gradMin = Double.POSITIVE_INFINITY;
        double gradMax = Double.NEGATIVE_INFINITY;
        double clipMax = Double.NEGATIVE_INFINITY;
        double lrMax = Double.NEGATIVE_INFINITY;
        double scaleMin = Double.POSITIVE_INFINITY;
        int nonFiniteLoss;
        int skips;
        int clips;
        int rollbacks;
        int halts;

        void merge(Agg o) {
            firstStep = Math.min(firstStep, o.firstStep);
            lastStep = Math.max(lastStep, o.lastStep);
            reports += o.reports;
            lossMin = Math.min(lossMin, o.lossMin);
            lossMax = Math.max(lossMax, o.lossMax);
            lossSum += o.lossSum;
            lossFinite += o.lossFinite;
            gradMin = Math.min(gradMin, o.gradMin);
            gradMax = Math.max(gradMax, o.gradMax);
            clipMax = Math.max(clipMax, o.clipMax);
            lrMax = Math.max(lrMax, o.lrMax);
            scaleMin = Math.min(scaleMin, o.scaleMin);
            nonFiniteLoss += o.nonFiniteLoss;
            skips += o.skips;
            clips += o.clips;
            rollbacks += o.rollbacks;
            halts += o.halts;
        }

        StepHistory.Bucket toBucket() {
            return new StepHistory.Bucket(firstStep, lastStep, reports, finite(lossMin), finite(lossMax),
                    lossFinite == 0 ? null : finite(lossSum / lossFinite), finite(gradMin), finite(gradMax),
                    finite(clipMax), finite(lrMax), finite(scaleMin), nonFiniteLoss, skips, clips, rollbacks, halts);
        }
    }

    private final String runId;
    private final int rank;
    private final TreeMap<Long, Agg> base = new TreeMap<>();
    long lastRowid;
    private long reports;

    Rollup(String runId, int rank) {
        this.runId = runId;
        this.rank = rank;
    }

    /** Rows taken in so far. */
    long rows() {
        return reports;
    }

    private static boolean heldBack(String action) {
        return !"APPLY".equals(action) && !"CLIP".equals(action);
    }

    void add(long rowid, long step, double loss, double grad, double clip, double lr, double scale, String action) {
        lastRowid = rowid;
        reports++;
        Agg a = base.computeIfAbsent(Math.floorDiv(step, BASE), k -> new Agg());
        a.firstStep = Math.min(a.firstStep, step);
        a.lastStep = Math.max(a.lastStep, step);
        a.reports++;
        if (Double.isFinite(loss)) {
            a.lossMin = Math.min(a.lossMin, loss);
            a.lossMax = Math.max(a.lossMax, loss);
            a.lossSum += loss;
            a.lossFinite++;
        } else if (!Double.isNaN(loss) || heldBack(action)) {
            // The journal stores NaN as NULL, and a step reported without a loss as NULL too: a NaN
            // loss is never applied, so a NULL on an applied step is an absent loss, not a NaN.
            a.nonFiniteLoss++;
        }
        if (Double.isFinite(grad)) {
            a.gradMin = Math.min(a.gradMin, grad);
            a.gradMax = Math.max(a.gradMax, grad);
        }
        if (Double.isFinite(clip)) {
            a.clipMax = Math.max(a.clipMax, clip);
        }
        if (Double.isFinite(lr)) {
            a.lrMax = Math.max(a.lrMax, lr);
        }
        if (Double.isFinite(scale)) {
            a.scaleMin = Math.min(a.scaleMin, scale);
        }
        switch (action) {
            case "SKIP" -> a.skips++;
            case "CLIP" -> a.clips++;
            case "ROLLBACK" -> a.rollbacks++;
            case "HALT" -> a.halts++;
            default -> {
            }
        }
    }

    /**
     * Steps lo..hi in at most {@code points} buckets whose width is a multiple of {@link #BASE}
     * (starting at a multiple of it: the first and last bucket may hold a few steps outside lo..hi).
     */
    StepHistory.Range range(long lo, long hi, int points) {
        long firstBase = Math.floorDiv(lo, BASE);
        long lastBase = Math.floorDiv(hi, BASE);
        long bases = lastBase - firstBase + 1;
        long perBucket = Math.max(1, (bases + points - 1) / points);
        List<StepHistory.Bucket> out = new ArrayList<>();
        Agg current = null;
        long currentIndex = Long.MIN_VALUE;
        long counted = 0;
        for (Map.Entry<Long, Agg> e : base.subMap(firstBase, true, lastBase, true).entrySet()) {
            long index = (e.getKey() - firstBase) / perBucket;
            if (current == null || index != currentIndex) {
                if (current != null) {
                    out.add(current.toBucket());
                }
                current = new Agg();
                currentIndex = index;
            }
            current.merge(e.getValue());
            counted += e.getValue().reports;
        }
        if (current != null) {
            out.add(current.toBucket());
        }
        return new StepHistory.Range(runId, rank, lo, hi, perBucket * BASE, counted, out);
    }

    long reports() {
        return reports;
    }

    private static Double finite(double v) {
        return Double.isFinite(v) ? v : null;
    }
}
