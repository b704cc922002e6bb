package io.trainguard.web.page;

import com.fasterxml.jackson.databind.ObjectMapper;
import io.trainguard.api.rest.CheckpointView;
import io.trainguard.api.rest.HistoryView;
import io.trainguard.api.rest.RestViews;
import io.trainguard.guard.RunReads;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.IncidentKind;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.report.RootCauseReport;
import jakarta.enterprise.context.ApplicationScoped;
import java.util.Comparator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/** Gathers what a page shows through the same calls the JSON API makes, so page and API agree. */
@ApplicationScoped
public class PageData {
    private final RunReads reads;
    private final RestViews views;
    private final ObjectMapper json;

    public PageData(RunReads reads, RestViews views, ObjectMapper json) {
        this.reads = reads;
        this.views = views;
        this.json = json;
    }

    record RunPage(RunSnapshot run, HistoryView history, List<Incident> incidents, List<Incident> preflight,
                   List<Incident> validations, List<CheckpointView> checkpoints, Map<String, Object> policy) {
    }

    record ReportPage(RunSnapshot run, Incident incident, RootCauseReport report) {
    }

    List<RunSnapshot> runs() {
        return reads.list().stream().sorted(Comparator.comparing(RunSnapshot::updatedTime).reversed()).toList();
    }

    @SuppressWarnings("unchecked")
    RunPage run(String runId, Long from, Long to, int rank, int points) {
        HistoryView history = views.history(runId, from, to, rank, points);
        var view = reads.view(runId, 500);
        List<Incident> incidents = view.incidents();
        Map<String, Object> policy = new TreeMap<>(json.convertValue(view.run().policy(), Map.class));
        return new RunPage(view.run(), history, incidents,
                incidents.stream().filter(i -> i.kind() == IncidentKind.PREFLIGHT).toList(),
                incidents.stream().filter(i -> i.kind() == IncidentKind.VALIDATION_MUTATION).toList(),
                views.checkpoints(runId), policy);
    }

    ReportPage report(String runId, long incidentId) {
        RootCauseReport report = views.report(runId, incidentId); // 404s for an unknown run or incident
        var view = reads.view(runId, 10_000);
        Incident incident = view.incidents().stream().filter(i -> i.id() == incidentId).findFirst().orElseThrow();
        return new ReportPage(view.run(), incident, report);
    }
}
