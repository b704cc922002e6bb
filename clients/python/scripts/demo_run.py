"""A real guarded training run that leaves every kind of event on the run page: a NaN burst that
rejects a fresh checkpoint and triggers a rollback to the known-good one, then healthy training.

    python clients/python/scripts/demo_run.py --target 127.0.0.1:7474 --root CHECKPOINT_ROOT [--run NAME]

CHECKPOINT_ROOT must be one of the sidecar's trainguard.checkpoint.roots. Used by the browser test
(PageBrowserIT) and to make the screenshots in docs/img/.
"""
import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from trainguard.guard import Guard  # noqa: E402
from models import make, train  # noqa: E402



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--run", default="demo-run")
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()

    import urllib.request

    def checkpoints():
        with urllib.request.urlopen(f"http://{args.target}/api/runs/{args.run}/checkpoints", timeout=10) as r:
            return {c["step"]: c["state"] for c in json.load(r)}

    def wait_for(step, state, timeout=120):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if checkpoints().get(step) == state:
                return True
            time.sleep(0.2)
        return False

    model, opt = make()
    policy = {"known_good_healthy_steps": 5, "rollback_skip_batches": 2, "spike_warmup_steps": 10,
              "validation_warmup_steps": 5, "validation_interval_steps": 5}
    # closed + generous deadlines: on a loaded CI machine a fail-open guard would train unguarded
    # a sidecar that has just started may still be warming up its scan kernels: retry the open
    import trainguard
    end = time.monotonic() + 240
    while True:
        try:
            g = Guard(model, opt, args.run, target=args.target, deadline=30.0, open_deadline=60.0,
                      failure_mode="closed", policy=policy)
            break
        except trainguard.SidecarUnavailable:
            if time.monotonic() > end:
                raise
            time.sleep(2)
    train(g, model, opt, 20)
    g.save_checkpoint(args.root, 19, data_position=20)
    train(g, model, opt, 40, start=20)
    g.flush()
    if not wait_for(19, "KNOWN_GOOD"):
        print(f"checkpoint 19 never became KNOWN_GOOD: {checkpoints()}", file=sys.stderr)
        return 1
    g.save_checkpoint(args.root, 41, data_position=42)

    burst = set(range(42, 48))

    def nan_burst(step, x, y, model):
        if step in burst:
            burst.discard(step)  # the replay after the rollback sees clean data
            y = y.clone()
            y[0, 0] = float("nan")
        return x, y
    rollbacks = []
    train(g, model, opt, args.steps, start=40, inject=nan_burst,
          on_verdict=lambda s, v: rollbacks.append(s) if v.action.name == "ROLLBACK" else None)
    g.flush()
    states = checkpoints()
    # left open: the page shows a live run
    print(json.dumps({"rollbacks": rollbacks, "checkpoints": states}))
    return 0 if rollbacks and "REJECTED" in states.values() else 1


if __name__ == "__main__":
    sys.exit(main())
