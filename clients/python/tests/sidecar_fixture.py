import os
import time

import pytest

from trainguard.testing import Sidecar, default_jar


def start_sidecar(tmp_path_factory, name):
    jar = default_jar()
    if not os.path.exists(jar):
        pytest.fail(f"sidecar jar not found at {jar}: build it (./mvnw package) or set TRAINGUARD_JAR")
    sc = Sidecar(jar=jar, workdir=str(tmp_path_factory.mktemp(name)))
    return sc.start()


def reported_losses(sidecar, run, steps, within=10.0):
    """The loss the sidecar recorded for each of the run's ``steps`` steps (its step history)."""
    end = time.monotonic() + within
    while True:
        buckets = sidecar.get(f"/api/runs/{run}/steps")["steps"]["buckets"]
        losses = {b["firstStep"]: b["lossMean"] for b in buckets if b["firstStep"] == b["lastStep"]}
        if len(losses) >= steps or time.monotonic() > end:
            return losses
        time.sleep(0.1)
