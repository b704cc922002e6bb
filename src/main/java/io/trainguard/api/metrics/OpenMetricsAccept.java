package io.trainguard.api.metrics;

import io.micrometer.prometheus.PrometheusMeterRegistry;
import io.prometheus.client.exporter.common.TextFormat;
import io.quarkus.vertx.http.ManagementInterface;
import io.vertx.ext.web.RoutingContext;
import jakarta.enterprise.context.ApplicationScoped;
import jakarta.enterprise.event.Observes;
import java.util.Locale;

/**
 * Serves OpenMetrics at /q/metrics to scrapers that ask for it without naming the charset.
 *
 * <p>Quarkus' Prometheus route declares {@code produces("application/openmetrics-text;
 * version=1.0.0; charset=utf-8")}, and Vert.x only matches an Accept entry that repeats every
 * parameter of a produced type: {@code Accept: application/openmetrics-text; version=1.0.0} (what
 * OpenMetrics scrapers and the spec's examples send) or a bare {@code application/openmetrics-text}
 * get 406. This route runs first, and only for Accept headers that want OpenMetrics and not the
 * Prometheus text format (the same choice Quarkus' handler makes); it asks the registry for the
 * OpenMetrics exposition, exactly what Quarkus' handler would have sent. Everything else (no
 * Accept, text/plain, Prometheus' own scrape header) goes on to Quarkus' handler unchanged.
 */
@ApplicationScoped
public class OpenMetricsAccept {
    /** Quarkus' default metrics path on the management interface (quarkus.micrometer.export.prometheus.path). */
    static final String PATH = "/q/metrics";

    private final PrometheusMeterRegistry registry;

    public OpenMetricsAccept(PrometheusMeterRegistry registry) {
        this.registry = registry;
    }

    void register(@Observes ManagementInterface management) {
        management.router().get(PATH).order(-1).handler(this::handle);
    }

    void handle(RoutingContext ctx) {
        if (!wantsOpenMetrics(ctx.request().getHeader("Accept"))) {
            ctx.next();
            return;
        }
        ctx.response().putHeader("Content-Type", TextFormat.CONTENT_TYPE_OPENMETRICS_100)
                .end(registry.scrape(TextFormat.CONTENT_TYPE_OPENMETRICS_100));
    }

    /** An Accept header naming OpenMetrics and not the text format (Quarkus serves text whenever text/plain appears). */
    static boolean wantsOpenMetrics(String accept) {
        if (accept == null) {
            return false;
        }
        String a = accept.toLowerCase(Locale.ROOT);
        return a.contains("application/openmetrics-text") && !a.contains("text/plain") && !a.contains("text/html");
    }
}
