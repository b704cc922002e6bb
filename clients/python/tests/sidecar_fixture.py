import os

import pytest

from trainguard.testing import Sidecar, default_jar


def start_sidecar(tmp_path_factory, name):
    jar = default_jar()
    if not os.path.exists(jar):
        pytest.fail(f"sidecar jar not found at {jar}: build it (./mvnw package) or set TRAINGUARD_JAR")
    sc = Sidecar(jar=jar, workdir=str(tmp_path_factory.mktemp(name)))
    return sc.start()
