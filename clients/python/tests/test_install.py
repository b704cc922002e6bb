"""Installing like a library: the wheel installs and works outside the source tree (Sidecar finds
the jar through TRAINGUARD_JAR, or says clearly how to give it); a wrong target in fail-open mode
says once, in words, what is unprotected."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from models import make, train
from trainguard.guard import Guard

CLIENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wrong_target_in_fail_open_says_once_in_words_what_is_unprotected():
    # prevents: a typo in the target leaving a run silently unguarded behind a gRPC debug string
    model, opt = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = Guard(model, opt, "typo", target="127.0.0.1:1", deadline=0.2, open_deadline=0.5)
        train(g, model, opt, 6)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    loud = [m for m in msgs if "NOT PROTECTED" in m]
    assert len(loud) == 1, msgs
    # grpcio 1.51 reports the refused connection as a deadline, current grpcio as UNAVAILABLE
    assert "127.0.0.1:1" in loud[0] and ("nothing answered there" in loud[0] or "nothing is listening" in loud[0])
    assert "rollback" in loud[0] and "validation gate" in loud[0] and "TRAINGUARD_TARGET" in loud[0]
    assert "StatusCode" not in loud[0] and "debug_error_string" not in loud[0]


@pytest.mark.torch2
def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    # prevents: a pip-installed client that cannot start its sidecar (jar looked up next to site-packages)
    pytest.importorskip("setuptools")
    import shutil
    src = tmp_path / "src"  # build from a copy: setuptools leaves build/ next to pyproject.toml
    shutil.copytree(CLIENT, src, ignore=shutil.ignore_patterns("tests", "build", "*.egg-info", "__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True)
    wheels = list(dist.glob("trainguard-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # torch, grpcio and protobuf from this interpreter's site-packages (a plain path: its .pth files,
    # e.g. an editable trainguard, are not processed); the client only from the wheel
    import site
    ours = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                          text=True, check=True).stdout.strip()
    with open(os.path.join(ours, "deps.pth"), "w") as f:
        f.write("\n".join(p for p in site.getsitepackages() if os.path.isdir(p)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", ours, str(wheels[0])],
                   check=True)
    code = ("import os, trainguard, trainguard.testing as t, trainguard._proto.trainguard.v1.trainguard_pb2; "
            "assert trainguard.__file__.startswith(os.environ['VENV']), trainguard.__file__; "
            "os.environ.pop('TRAINGUARD_JAR', None)\n"
            "try:\n    t.Sidecar()\nexcept FileNotFoundError as e:\n    assert 'TRAINGUARD_JAR' in str(e); print('ERR-OK')\n"
            "os.environ['TRAINGUARD_JAR'] = os.environ['JAR']\n"
            "sc = t.Sidecar().start()\n"
            "import torch\nfrom trainguard import Guard\n"
            "m = torch.nn.Linear(4, 1); o = torch.optim.SGD(m.parameters(), lr=0.1)\n"
            "g = Guard(m, o, 'wheel', target=sc.target, deadline=5.0)\n"
            "m(torch.randn(8, 4)).pow(2).mean().backward(); print(g.step(0, None).action.name); g.close(); sc.stop()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["VENV"] = str(venv)
    env["JAR"] = os.environ.get("TRAINGUARD_JAR") or os.path.join(CLIENT, "..", "..", "target", "quarkus-app",
                                                                    "quarkus-run.jar")
    out = subprocess.run([py, "-c", code], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERR-OK" in out.stdout and "APPLY" in out.stdout, out.stdout


def test_the_submodules_the_docs_name_are_reachable_after_a_plain_import():
    # prevents: the docs' restore_hook recipe (trainguard.checkpoints.restore) raising AttributeError in a
    # restarted trainer that had not called checkpoint_saved yet: its rollback failed and the run halted
    import re
    import subprocess
    import sys
    docs = open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "docs", "client.md")).read()
    named = sorted(set(re.findall(r"\btrainguard\.([a-z_]+)\.[A-Za-z_]+\(", docs)))
    assert "checkpoints" in named, named
    code = "import trainguard\n" + "".join(f"trainguard.{m}\n" for m in named)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert p.returncode == 0, p.stderr
