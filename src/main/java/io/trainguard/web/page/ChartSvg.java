package io.trainguard.web.page;

import io.trainguard.api.rest.HistoryView;
import io.trainguard.store.StepHistory;
import java.util.List;
import java.util.Locale;
import java.util.function.Function;

/**
 * Draws one metric of a run's history as inline SVG: the min..max band of each bucket (so a
 * one-step spike stays visible at 10^6 steps), the mean line, an optional threshold line, and the
 * run's incidents, checkpoints and rollbacks as markers on the same step axis. Server-side, no
 * JavaScript needed to see it; markers carry data-* attributes for the page's hover script.
 */
final class ChartSvg {
    static final int WIDTH = 960;
    static final int HEIGHT = 240;
    private static final int LEFT = 64;
    private static final int RIGHT = 12;
    private static final int TOP = 22;
    private static final int BOTTOM = 26;

    private final HistoryView view;
    private final long x0;
    private final long x1;

    ChartSvg(HistoryView view) {
        this.view = view;
        this.x0 = view.steps().fromStep();
        this.x1 = Math.max(view.steps().toStep(), x0 + 1);
    }

    double x(double step) {
        return LEFT + (step - x0) / (double) (x1 - x0) * (WIDTH - LEFT - RIGHT);
    }

    /**
     * @param id    the svg's element id (tests find charts by it)
     * @param min   bucket -> lower edge of the band (null = none)
     * @param max   bucket -> upper edge
     * @param mean  bucket -> the line (null: the middle of the band)
     */
    String render(String id, String label, Function<StepHistory.Bucket, Double> min, Function<StepHistory.Bucket, Double> max,
                  Function<StepHistory.Bucket, Double> mean, Function<StepHistory.Bucket, Double> threshold) {
        List<StepHistory.Bucket> b = view.steps().buckets();
        double lo = Double.POSITIVE_INFINITY;
        double hi = Double.NEGATIVE_INFINITY;
        for (StepHistory.Bucket k : b) {
            for (Double v : new Double[] {min.apply(k), max.apply(k), threshold == null ? null : threshold.apply(k)}) {
                if (v != null && v > 0 && Double.isFinite(v)) {
                    lo = Math.min(lo, v);
                    hi = Math.max(hi, v);
                }
            }
        }
        StringBuilder s = new StringBuilder();
        s.append(String.format(Locale.ROOT, "<svg id=\"%s\" class=\"chart\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" "
                + "role=\"img\" aria-label=\"%s over steps\" xmlns=\"http://www.w3.org/2000/svg\">", id, WIDTH, HEIGHT, WIDTH,
                HEIGHT, esc(label)));
        s.append(String.format(Locale.ROOT, "<text x=\"%d\" y=\"15\" class=\"label\">%s</text>", LEFT, esc(label)));
        s.append(String.format(Locale.ROOT, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" class=\"plot\"/>", LEFT, TOP,
                WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM));
        if (b.isEmpty() || lo > hi) {
            s.append(String.format(Locale.ROOT, "<text x=\"%d\" y=\"%d\" class=\"empty\">no steps reported yet</text>",
                    WIDTH / 2 - 60, HEIGHT / 2));
        } else {
            // log scale when values span decades (a loss spike must not flatten the rest of the curve)
            boolean log = hi / lo > 100;
            Scale y = new Scale(lo, hi, log);
            axes(s, y, log);
            band(s, b, min, max, y);
            line(s, b, mean != null ? mean : k -> avg(min.apply(k), max.apply(k)), y, "mean");
            if (threshold != null) {
                line(s, b, threshold, y, "threshold");
            }
            nonFinite(s, b);
        }
        markers(s);
        s.append("</svg>");
        return s.toString();
    }

    private static Double avg(Double a, Double b) {
        return a == null || b == null ? null : (a + b) / 2;
    }

    private final class Scale {
        final double lo;
        final double hi;
        final boolean log;

        Scale(double lo, double hi, boolean log) {
            double pad = log ? 0 : Math.max((hi - lo) * 0.05, Math.abs(hi) * 1e-6 + 1e-12);
            this.lo = log ? Math.log10(lo) : lo - pad;
            this.hi = log ? Math.log10(hi) : hi + pad;
            this.log = log;
        }

        double y(double v) {
            double t = log ? Math.log10(Math.max(v, 1e-300)) : v;
            double f = hi == lo ? 0.5 : (t - lo) / (hi - lo);
            return TOP + (1 - f) * (HEIGHT - TOP - BOTTOM);
        }
    }

    private void axes(StringBuilder s, Scale y, boolean log) {
        for (int i = 0; i <= 4; i++) {
            double t = y.lo + (y.hi - y.lo) * i / 4;
            double v = log ? Math.pow(10, t) : t;
            double py = y.y(v);
            s.append(String.format(Locale.ROOT, "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
                    + "<text x=\"%d\" y=\"%.1f\" class=\"tick\" text-anchor=\"end\">%s</text>", LEFT, WIDTH - RIGHT, py, py,
                    LEFT - 4, py + 4, fmt(v)));
        }
        for (int i = 0; i <= 5; i++) {
            double step = x0 + (x1 - x0) * i / 5.0;
            s.append(String.format(Locale.ROOT, "<text x=\"%.1f\" y=\"%d\" class=\"tick\" text-anchor=\"middle\">%d</text>",
                    x(step), HEIGHT - 8, Math.round(step)));
        }
    }

    private void band(StringBuilder s, List<StepHistory.Bucket> b, Function<StepHistory.Bucket, Double> min,
                      Function<StepHistory.Bucket, Double> max, Scale y) {
        StringBuilder top = new StringBuilder();
        StringBuilder bottom = new StringBuilder();
        for (StepHistory.Bucket k : b) {
            Double a = min.apply(k);
            Double c = max.apply(k);
            if (a == null || c == null) {
                continue;
            }
            double px = x((k.firstStep() + k.lastStep()) / 2.0);
            top.append(String.format(Locale.ROOT, "%.1f,%.1f ", px, y.y(c)));
            bottom.insert(0, String.format(Locale.ROOT, "%.1f,%.1f ", px, y.y(a)));
        }
        s.append("<polygon class=\"band\" points=\"").append(top).append(bottom).append("\"/>");
    }

    private void line(StringBuilder s, List<StepHistory.Bucket> b, Function<StepHistory.Bucket, Double> f, Scale y, String cls) {
        StringBuilder d = new StringBuilder();
        boolean pen = false;
        for (StepHistory.Bucket k : b) {
            Double v = f.apply(k);
            if (v == null || (y.log && v <= 0)) {
                pen = false; // a gap where the value is missing (NaN) or not drawable
                continue;
            }
            d.append(pen ? 'L' : 'M').append(String.format(Locale.ROOT, "%.1f,%.1f", x((k.firstStep() + k.lastStep()) / 2.0), y.y(v)));
            pen = true;
        }
        s.append("<path class=\"").append(cls).append("\" d=\"").append(d).append("\"/>");
    }

    /** Buckets holding a non-finite loss get a red tick at the bottom: a NaN has no y. */
    private void nonFinite(StringBuilder s, List<StepHistory.Bucket> b) {
        for (StepHistory.Bucket k : b) {
            if (k.nonFiniteLoss() > 0) {
                double px = x(k.firstStep());
                s.append(String.format(Locale.ROOT, "<rect class=\"nonfinite\" x=\"%.1f\" y=\"%d\" width=\"2\" height=\"8\">"
                        + "<title>%d non-finite loss value(s) at steps %d-%d</title></rect>", px - 1, HEIGHT - BOTTOM - 8,
                        k.nonFiniteLoss(), k.firstStep(), k.lastStep()));
            }
        }
    }

    private void markers(StringBuilder s) {
        for (HistoryView.CheckpointMark c : view.checkpoints()) {
            double px = x(c.step());
            String cls = switch (c.state()) {
                case "KNOWN_GOOD" -> "ckpt good";
                case "REJECTED", "UNVERIFIABLE" -> "ckpt rejected";
                default -> "ckpt pending";
            };
            s.append(String.format(Locale.ROOT, "<path class=\"marker %s\" d=\"M%.1f,%d l-6,10 h12 z\" data-kind=\"checkpoint %s\" "
                    + "data-step=\"%d\" data-module=\"\" data-message=\"%s\"><title>checkpoint %s at step %d: %s</title></path>",
                    cls, px, HEIGHT - BOTTOM - 10, esc(c.state()), c.step(), esc(c.id() + ": " + nz(c.stateReason())),
                    esc(c.state()), c.step(), esc(nz(c.stateReason()))));
        }
        for (StepHistory.Event r : view.rollbacks()) {
            double px = x(r.step());
            s.append(String.format(Locale.ROOT, "<line class=\"rollback\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%d\" y2=\"%d\"/>", px, px, TOP,
                    HEIGHT - BOTTOM));
        }
        for (StepHistory.Event e : view.incidents()) {
            if (e.step() < x0 || e.step() > x1) {
                continue; // pre-flight findings (step -1) are listed, not drawn
            }
            double px = x(e.step());
            s.append(String.format(Locale.ROOT, "<circle class=\"marker incident %s\" cx=\"%.1f\" cy=\"%d\" r=\"5\" tabindex=\"0\" "
                    + "data-id=\"%d\" data-kind=\"%s\" data-step=\"%d\" data-module=\"%s\" data-message=\"%s\">"
                    + "<title>%s at step %d%s: %s</title></circle>", e.severity().toLowerCase(Locale.ROOT), px, TOP + 6, e.id(),
                    esc(e.kind()), e.step(), esc(nz(e.module())), esc(e.message()), esc(e.kind()), e.step(),
                    nz(e.module()).isEmpty() ? "" : " in " + esc(e.module()), esc(e.message())));
        }
    }

    private static String nz(String s) {
        return s == null ? "" : s;
    }

    static String fmt(double v) {
        double a = Math.abs(v);
        return a != 0 && (a >= 1e5 || a < 1e-3) ? String.format(Locale.ROOT, "%.2e", v) : String.format(Locale.ROOT, "%.4g", v);
    }

    static String esc(String s) {
        if (s == null) {
            return "";
        }
        StringBuilder b = new StringBuilder(s.length());
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '<' -> b.append("&lt;");
                case '>' -> b.append("&gt;");
                case '&' -> b.append("&amp;");
                case '"' -> b.append("&quot;");
                case '\'' -> b.append("&#39;");
                default -> b.append(c);
            }
        }
        return b.toString();
    }
}
