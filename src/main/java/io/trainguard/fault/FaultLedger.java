package io.trainguard.fault;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Counts transient faults per device. A device past {@code suspectThreshold} transients is suspect:
 * silent data corruption or a failing part, something a scheduler should move the job away from.
 * Plain Java; the counts live as long as the sidecar (each fault is also journaled as an incident).
 */
public final class FaultLedger {

    /** A device's tally after one fault; {@code becameSuspect} is true only on the fault that crossed the threshold. */
    public record Tally(String runId, String device, int transients, boolean suspect, boolean becameSuspect) {
    }

    /** Told once when a device becomes suspect and once when it is cleared. */
    public interface Listener {
        void suspectChanged(String runId, String device, boolean suspect);
    }

    private final int suspectThreshold;
    private final Listener listener;
    private final Map<String, Map<String, Tally>> byRun = new ConcurrentHashMap<>();
    private final Map<String, String> processByRank = new ConcurrentHashMap<>();

    /** @param suspectThreshold transients that make a device suspect; 0 = never */
    public FaultLedger(int suspectThreshold, Listener listener) {
        if (suspectThreshold < 0) {
            throw new IllegalArgumentException("suspect-device-transients must be >= 0 (0 = never suspect)");
        }
        this.suspectThreshold = suspectThreshold;
        this.listener = listener;
    }

    public int suspectThreshold() {
        return suspectThreshold;
    }

    /** Records one classified fault; only TRANSIENT faults count towards a suspect device. */
    public synchronized Tally record(String runId, String device, FaultClass fault) {
        String dev = device == null || device.isBlank() ? "unknown" : device;
        Map<String, Tally> devices = byRun.computeIfAbsent(runId, r -> new ConcurrentHashMap<>());
        Tally before = devices.getOrDefault(dev, new Tally(runId, dev, 0, false, false));
        if (fault != FaultClass.TRANSIENT) {
            return new Tally(runId, dev, before.transients(), before.suspect(), false);
        }
        int n = before.transients() + 1;
        boolean suspect = before.suspect() || suspectThreshold > 0 && n >= suspectThreshold;
        Tally after = new Tally(runId, dev, n, suspect, suspect && !before.suspect());
        devices.put(dev, after);
        if (after.becameSuspect()) {
            listener.suspectChanged(runId, dev, true);
        }
        return after;
    }

    /**
     * A rank opened the run. When it is a new trainer process (the suspect one was restarted or
     * moved), the run's devices start from zero, so the health group does not hold the new process
     * down for the old one. The same process re-opening (after losing the sidecar) changes nothing.
     */
    public synchronized void opened(String runId, int rank, String trainerInstance) {
        String before = processByRank.put(runId + "#" + rank, trainerInstance == null ? "" : trainerInstance);
        if (before == null || before.equals(trainerInstance)) {
            return;
        }
        Map<String, Tally> devices = byRun.remove(runId);
        if (devices != null) {
            devices.values().stream().filter(Tally::suspect).forEach(t -> listener.suspectChanged(runId, t.device(), false));
        }
    }

    public synchronized List<Tally> suspects() {
        List<Tally> out = new ArrayList<>();
        byRun.values().forEach(d -> d.values().stream().filter(Tally::suspect).forEach(out::add));
        return out;
    }
}
