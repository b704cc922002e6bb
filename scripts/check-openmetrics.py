#!/usr/bin/env python3
"""Validates an OpenMetrics 1.0 exposition on stdin (what `promtool check metrics` does for the
Prometheus text format; promtool cannot parse OpenMetrics, prometheus/prometheus#8932).

Uses the strict OpenMetrics parser of the Prometheus Python client (Debian python3-prometheus-client):
it refuses a missing `# EOF`, text-format escaping, counters without `_total`, bad histograms.
Then checks that every family whose name starts with the prefix given as argv[1] (default
`trainguard_`) has help text. Exit 0 and one summary line when valid; 1 and the reason when not.
"""
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> int:
    prefix = sys.argv[1] if len(sys.argv) > 1 else "trainguard_"
    text = sys.stdin.read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as e:  # the parser raises ValueError (and a few others) with the offending line
        print(f"not valid OpenMetrics: {e}")
        return 1
    ours = [f for f in families if f.name.startswith(prefix)]
    no_help = [f.name for f in ours if not f.documentation]
    if not ours:
        print(f"valid OpenMetrics, but no {prefix}* family")
        return 1
    if no_help:
        print(f"{prefix}* families without help text: {no_help}")
        return 1
    print(f"valid OpenMetrics: {len(families)} families, {len(ours)} {prefix}*")
    return 0


if __name__ == "__main__":
    sys.exit(main())
