package io.trainguard.web.page;

import io.quarkus.qute.CheckedTemplate;
import io.quarkus.qute.TemplateInstance;
import io.trainguard.api.rest.CheckpointView;
import io.trainguard.api.rest.HistoryView;
import io.trainguard.guard.model.Incident;
import io.trainguard.guard.model.RunSnapshot;
import io.trainguard.report.RootCauseReport;
import io.trainguard.store.StepHistory;
import java.util.List;
import java.util.Map;

/**
 * The operator's pages: {@code /} lists the runs, {@code /runs/{id}} shows one (curves, markers,
 * state, policy, audits), {@code /runs/{id}/incidents/{n}} the root-cause report. Server-rendered
 * Qute with inline SVG: nothing to build, nothing fetched by the browser but the page itself.
 */
@jakarta.ws.rs.Path("/")
public class RunPages {

    @CheckedTemplate
    static class Templates {
        static native TemplateInstance index(List<RunSnapshot> runs);

        static native TemplateInstance run(RunSnapshot run, HistoryView history, String lossChart, String gradChart,
                                           List<Incident> incidents, List<Incident> preflight, List<Incident> validations,
                                           List<CheckpointView> checkpoints, Map<String, Object> policy, int rank, int points);

        static native TemplateInstance report(RunSnapshot run, Incident incident, RootCauseReport report);
    }

    private final PageData data;

    public RunPages(PageData data) {
        this.data = data;
    }

    @jakarta.ws.rs.GET
    @jakarta.ws.rs.Produces(jakarta.ws.rs.core.MediaType.TEXT_HTML)
    public TemplateInstance index() {
        return Templates.index(data.runs());
    }

    @jakarta.ws.rs.GET
    @jakarta.ws.rs.Path("runs/{runId}")
    @jakarta.ws.rs.Produces(jakarta.ws.rs.core.MediaType.TEXT_HTML)
    public TemplateInstance run(@jakarta.ws.rs.PathParam("runId") String runId,
                                @jakarta.ws.rs.QueryParam("from") Long from, @jakarta.ws.rs.QueryParam("to") Long to,
                                @jakarta.ws.rs.QueryParam("rank") @jakarta.ws.rs.DefaultValue("0") int rank,
                                @jakarta.ws.rs.QueryParam("points") @jakarta.ws.rs.DefaultValue("600") int points) {
        PageData.RunPage p = data.run(runId, from, to, rank, points);
        ChartSvg chart = new ChartSvg(p.history());
        String loss = chart.render("loss-chart", "loss (min..max band per bucket, mean line)",
                StepHistory.Bucket::lossMin, StepHistory.Bucket::lossMax, StepHistory.Bucket::lossMean, null);
        String grad = chart.render("grad-chart", "gradient norm (band) and clip threshold (dashed)",
                StepHistory.Bucket::gradNormMin, StepHistory.Bucket::gradNormMax, null,
                k -> k.clipThreshold() == null || k.clipThreshold() <= 0 ? null : k.clipThreshold());
        return Templates.run(p.run(), p.history(), loss, grad, p.incidents(), p.preflight(), p.validations(), p.checkpoints(),
                p.policy(), rank, points);
    }

    @jakarta.ws.rs.GET
    @jakarta.ws.rs.Path("runs/{runId}/incidents/{incidentId}")
    @jakarta.ws.rs.Produces(jakarta.ws.rs.core.MediaType.TEXT_HTML)
    public TemplateInstance report(@jakarta.ws.rs.PathParam("runId") String runId,
                                   @jakarta.ws.rs.PathParam("incidentId") long incidentId) {
        PageData.ReportPage p = data.report(runId, incidentId);
        return Templates.report(p.run(), p.incident(), p.report());
    }
}
