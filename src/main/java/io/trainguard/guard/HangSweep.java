package io.trainguard.guard;

import io.trainguard.guard.model.HangReport;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.Severity;
import io.trainguard.guard.run.RunDecider;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.LongSupplier;

/**
 * Finds ranks that stopped making progress, over every run, and journals each hang once: the
 * trainer health check reads {@link #hangs()}, a periodic task calls {@link #recordHangs()}.
 */
public final class HangSweep {
    private final GuardedRuns runs;
    private final LongSupplier nanoTime;
    /** Hangs already journaled, so a silent stretch is one incident however often it is swept. */
    private final Set<String> reported = ConcurrentHashMap.newKeySet();

    public HangSweep(GuardedRuns runs, LongSupplier nanoTime) {
        this.runs = runs;
        this.nanoTime = nanoTime;
    }

    /** Every rank that is overdue now. */
    public List<HangReport> hangs() {
        long now = nanoTime.getAsLong();
        List<HangReport> out = new ArrayList<>();
        for (RunDecider g : runs.deciders()) {
            out.addAll(g.hangs(now));
        }
        return out;
    }

    /**
     * Journals a HANG incident the first time each rank is seen hung (once per silent stretch: a
     * rank that reports again and hangs later is a new incident). Called periodically.
     */
    public List<HangReport> recordHangs() {
        List<HangReport> hangs = hangs();
        Set<String> current = new HashSet<>();
        for (HangReport h : hangs) {
            String key = h.runId() + "#" + h.rank() + "#" + h.lastStep() + "#" + h.phase();
            current.add(key);
            if (reported.add(key)) {
                runs.recordIncident(h.runId(), h.rank(), h.lastStep(), IncidentKind.HANG, Severity.CRITICAL,
                        "rank " + h.rank() + " has made no progress in phase " + h.phase() + " after step " + h.lastStep()
                                + " for " + h.silentFor().toSeconds() + " s (allowed " + h.allowed().toSeconds()
                                + " s = hang_factor x its learned duration): the trainer looks hung; the trainer health "
                                + "group is DOWN so Kubernetes restarts it");
            }
        }
        reported.retainAll(current);
        return hangs;
    }
}
