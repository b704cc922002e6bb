"""`trainguard` command line: the sidecar's REST API for people and scripts.

    trainguard runs
    trainguard show RUN
    trainguard incidents RUN
    trainguard report RUN INCIDENT
    trainguard resume RUN --reason "fixed the data loader"
    trainguard close RUN --reason "job deleted, not coming back"
    trainguard policy RUN [--set key=value ...]

Tables by default, ``--json`` for scripts. The sidecar is ``--url`` or ``$TRAINGUARD_URL``
(default http://127.0.0.1:7474). Standard library only: no web framework in the trainer's env.
"""
import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from .token_source import resolve_token

DEFAULT_URL = "http://127.0.0.1:7474"


class CliError(Exception):
    """A message for the user; exit status 2 (unreachable) or 1 (refused)."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


def _request(base, method, path, body=None, token=None, timeout=10.0):
    url = base.rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            msg = json.loads(raw).get("message") or raw.decode()
        except (ValueError, AttributeError):
            msg = raw.decode(errors="replace")
        raise CliError(f"{method} {path}: HTTP {e.code}: {msg}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise CliError(f"cannot reach the trainguard sidecar at {base} ({reason}). Is it running? "
                       f"Set --url or TRAINGUARD_URL to its HTTP address (host:port of trainguard.listen.port).",
                       status=2) from None


def _table(rows, columns):
    """columns: [(header, key or callable)]; plain fixed-width text."""
    cells = [[h for h, _ in columns]]
    for r in rows:
        cells.append([_cell(k(r) if callable(k) else r.get(k)) for _, k in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c[i].ljust(widths[i]) for i in range(len(columns))).rstrip() for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    s = str(v)
    return s if len(s) <= 100 else s[:97] + "..."


def _q(run):
    return urllib.parse.quote(run, safe="")


def cmd_runs(api, args):
    runs = api("GET", "/api/runs")
    return runs, _table(runs, [("RUN", "runId"), ("STATE", "state"), ("LAST STEP", "lastStep"),
                               ("STEPS", "stepsReported"), ("ROLLBACKS", "rollbacks"), ("REASON", "stateReason")]) \
        if runs else "no runs"


INCIDENT_COLUMNS = [("ID", "id"), ("STEP", "step"), ("RANK", "rank"), ("KIND", "kind"), ("SEVERITY", "severity"),
                    ("MODULE", "module"), ("MESSAGE", "message")]


def cmd_show(api, args):
    detail = api("GET", f"/api/runs/{_q(args.run)}?incidents=20")
    steps = api("GET", f"/api/runs/{_q(args.run)}/steps?points=10")
    run = detail["run"]
    out = [f"run {run['runId']}: {run['state']}" + (f" ({run['stateReason']})" if run.get("stateReason") else ""),
           f"last step {run['lastStep']}, {run['stepsReported']} steps reported, {run['rollbacks']} rollback(s), "
           f"world size {run['worldSize']}", "", "recent steps (downsampled):"]
    buckets = steps["steps"]["buckets"]
    out.append(_table(buckets, [("STEPS", lambda b: f"{b['firstStep']}-{b['lastStep']}"), ("LOSS MIN", "lossMin"),
                                ("LOSS MAX", "lossMax"), ("GRAD MAX", "gradNormMax"), ("CLIP", "clipThreshold"),
                                ("SKIPS", "skips"), ("CLIPS", "clips")]) if buckets else "  none")
    out += ["", "incidents (newest first):",
            _table(detail["incidents"], INCIDENT_COLUMNS) if detail["incidents"] else "  none",
            "", "checkpoints:",
            _table(detail["checkpoints"], [("ID", "id"), ("STEP", "step"), ("STATE", "state"), ("REASON", "stateReason")])
            if detail["checkpoints"] else "  none"]
    return {"run": run, "incidents": detail["incidents"], "checkpoints": detail["checkpoints"],
            "steps": steps["steps"]}, "\n".join(out)


def cmd_incidents(api, args):
    incidents = api("GET", f"/api/runs/{_q(args.run)}/incidents?limit={args.limit}")
    return incidents, _table(incidents, INCIDENT_COLUMNS) if incidents else "no incidents"


def cmd_report(api, args):
    r = api("GET", f"/api/runs/{_q(args.run)}/incidents/{args.incident}/report")
    out = [f"incident {r['incidentId']} of {r['runId']}: {r['kind']} ({r['severity']})", f"what:  {r['what']}",
           f"where: {r['where']['description']}", "likely causes:"]
    for n, c in enumerate(r["likelyCauses"], 1):
        out += [f"  {n}. {c['title']} [{c['code']}]", f"     evidence: {c['evidence']}", f"     change:   {c['fix']}"]
    out.append("checked: " + ", ".join(r["evidenceChecked"]))
    return r, "\n".join(out)


def cmd_resume(api, args):
    run = api("POST", f"/api/runs/{_q(args.run)}/resume", {"reason": args.reason})
    return run, f"run {run['runId']} is now {run['state']}"


def cmd_close(api, args):
    run = api("POST", f"/api/runs/{_q(args.run)}/close", {"reason": args.reason})
    return run, f"run {run['runId']} is now {run['state']}"


def _value(text):
    """key=value: numbers and booleans as JSON, anything else as a string (enum names, durations)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_policy(api, args):
    if args.set:
        patch = {}
        for kv in args.set:
            if "=" not in kv:
                raise CliError(f"--set wants key=value, got '{kv}' (e.g. --set spikeZThreshold=4.5)")
            k, v = kv.split("=", 1)
            patch[k.strip()] = _value(v.strip())
        if args.reason:
            patch["reason"] = args.reason
        policy = api("PUT", f"/api/runs/{_q(args.run)}/policy", patch)
    else:
        policy = api("GET", f"/api/runs/{_q(args.run)}")["run"]["policy"]
    return policy, _table([{"k": k, "v": v} for k, v in sorted(policy.items())], [("KEY", "k"), ("VALUE", "v")])


def parser():
    p = argparse.ArgumentParser(prog="trainguard", description="Look at and steer runs guarded by a trainguard sidecar.")
    p.add_argument("--url", default=os.environ.get("TRAINGUARD_URL", DEFAULT_URL),
                   help="the sidecar's HTTP address (default $TRAINGUARD_URL or %(default)s)")
    p.add_argument("--token", default=None,
                   help="bearer token for state-changing calls (default $TRAINGUARD_TOKEN, else the file named by "
                        "$TRAINGUARD_TOKEN_FILE or mounted at /var/run/secrets/trainguard/token, as the client reads it)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default %(default)s)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("runs", help="list runs").set_defaults(fn=cmd_runs)
    s = sub.add_parser("show", help="a run: state, recent steps, incidents, checkpoints")
    s.add_argument("run")
    s.set_defaults(fn=cmd_show)
    s = sub.add_parser("incidents", help="a run's incidents, newest first")
    s.add_argument("run")
    s.add_argument("--limit", type=int, default=200)
    s.set_defaults(fn=cmd_incidents)
    s = sub.add_parser("report", help="root-cause report of one incident")
    s.add_argument("run")
    s.add_argument("incident", type=int)
    s.set_defaults(fn=cmd_report)
    s = sub.add_parser("resume", help="resume a halted run")
    s.add_argument("run")
    s.add_argument("--reason", required=True, help="why it is safe to continue (journaled)")
    s.set_defaults(fn=cmd_resume)
    s = sub.add_parser("close", help="close a run whose trainer is gone for good (its hang stops counting)")
    s.add_argument("run")
    s.add_argument("--reason", required=True, help="why (journaled)")
    s.set_defaults(fn=cmd_close)
    s = sub.add_parser("policy", help="show a run's policy, or change it with --set key=value")
    s.add_argument("run")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="camelCase policy field, repeatable")
    s.add_argument("--reason", help="why (journaled with the change)")
    s.set_defaults(fn=cmd_policy)
    return p


def main(argv=None):
    args = parser().parse_args(argv)

    def api(method, path, body=None):
        return _request(args.url, method, path, body, token=resolve_token(args.token), timeout=args.timeout)

    try:
        data, text = args.fn(api, args)
    except CliError as e:
        print(f"trainguard: {e}", file=sys.stderr)
        return e.status
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
