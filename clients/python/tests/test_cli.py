"""The `trainguard` CLI against the real sidecar jar, fed by a real guarded PyTorch loop; and the
root-cause reports of examples/hallo_like.py's two bugs, read through the CLI."""
import json
import os
import time
import subprocess
import sys

import pytest

from trainguard.sidecar import free_port
from models import make, train

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT = os.path.dirname(HERE)
EXAMPLE = os.path.join(CLIENT, "..", "..", "examples", "hallo_like.py")


def cli(sc, *args, url=None):
    env = dict(os.environ, PYTHONPATH=CLIENT)
    p = subprocess.run([sys.executable, "-m", "trainguard.cli", "--url", url or f"http://{sc.target}", *args],
                       capture_output=True, text=True, env=env, timeout=60)
    return p.returncode, p.stdout, p.stderr


@pytest.fixture(scope="module")
def halted_run(sidecar):
    """A real loop whose loss turns NaN for good: skipped, then halted by the sidecar."""
    import trainguard
    from trainguard.guard import Guard

    def poison(step, x, y, model):
        if step >= 12:
            y = y.clone()
            y[0, 0] = float("nan")
        return x, y
    model, opt = make()
    g = Guard(model, opt, "cli-halt", target=sidecar.target, deadline=2.0,
              policy={"max_consecutive_skips": 3, "known_good_healthy_steps": 5})
    with pytest.raises(trainguard.TrainingHalted):
        train(g, model, opt, 30, inject=poison)
    return "cli-halt"


def test_runs_table_and_json_listHaltedRun(sidecar, halted_run):
    # prevents: a CLI whose table or --json drops the run or its state
    rc, out, err = cli(sidecar, "runs")
    assert rc == 0, err
    assert out.splitlines()[0].split()[:2] == ["RUN", "STATE"]
    assert any(line.split()[:2] == [halted_run, "HALTED"] for line in out.splitlines())
    rc, out, _ = cli(sidecar, "--json", "runs")
    assert {"runId": halted_run, "state": "HALTED"}.items() <= next(r for r in json.loads(out) if r["runId"] == halted_run).items()


def test_show_and_incidents_nanRun_listNonFiniteStepsAndHalt(sidecar, halted_run):
    # prevents: `show` hiding the incidents that explain a halt
    rc, out, err = cli(sidecar, "show", halted_run)
    assert rc == 0, err
    assert f"run {halted_run}: HALTED" in out and "NON_FINITE_LOSS" in out and "HALT" in out
    rc, out, _ = cli(sidecar, "--json", "incidents", halted_run)
    incidents = json.loads(out)
    assert ("NON_FINITE_LOSS", 12) in [(i["kind"], i["step"]) for i in incidents]
    halt = next(i for i in incidents if i["kind"] == "HALT")
    rc, out, err = cli(sidecar, "report", halted_run, str(halt["id"]))
    assert rc == 0, err
    assert "likely causes:" in out and f"step {halt['step']}" in out


def test_policy_set_and_resume_haltedRun_changeIsAppliedAndRunResumes(sidecar, halted_run):
    # prevents: `policy --set` sending strings for numbers, or resume not reaching the engine
    rc, out, err = cli(sidecar, "--json", "policy", halted_run, "--set", "maxConsecutiveSkips=9", "--reason", "cli test")
    assert rc == 0, err
    assert json.loads(out)["maxConsecutiveSkips"] == 9
    rc, out, err = cli(sidecar, "resume", halted_run, "--reason", "bad batch removed")
    assert rc == 0, err
    assert "is now" in out and "HALTED" not in out
    rc, out, err = cli(sidecar, "policy", halted_run, "--set", "nonsense")
    assert rc == 1 and "key=value" in err


def test_errors_unreachableOrUnknownRun_clearMessageAndStatus(sidecar):
    # prevents: a Python traceback instead of "is it running?" when the sidecar is down
    rc, out, err = cli(sidecar, "runs", url=f"http://127.0.0.1:{free_port()}")
    assert rc == 2 and "cannot reach the trainguard sidecar" in err and "Traceback" not in err
    rc, out, err = cli(sidecar, "show", "no-such-run")
    assert rc == 1 and "HTTP 404" in err


def test_close_a_run_whose_trainer_is_gone_closes_it_with_the_reason_journaled(sidecar):
    # prevents: no way for an operator to retire a crashed job's open run (its hang kept the trainer health
    # group DOWN): `trainguard close` closes it, and a trainer coming back under the id is told to use a new one
    from trainguard.errors import RunRefused
    from trainguard.guard import Guard
    model, opt = make()
    run = f"cli-close-{time.time_ns()}"
    g = Guard(model, opt, run, target=sidecar.target, deadline=2.0)
    train(g, model, opt, steps=3)
    g.close(close_run=False)  # what a crash leaves: the run open for a restart that never comes
    rc, out, err = cli(sidecar, "close", run)
    assert rc != 0 and "--reason" in err  # a reason is journaled
    rc, out, err = cli(sidecar, "close", run, "--reason", "job deleted")
    assert rc == 0 and "is now CLOSED" in out, out + err
    rc, out, err = cli(sidecar, "--json", "incidents", run)
    assert any(i["kind"] == "CLOSED_BY_OPERATOR" and "job deleted" in i["message"] for i in json.loads(out)), out
    with pytest.raises(RunRefused):
        Guard(model, opt, run, target=sidecar.target, deadline=2.0, failure_mode="closed")


def run_example(sidecar, *args):
    p = subprocess.run([sys.executable, EXAMPLE, "--target", sidecar.target, *args], capture_output=True, text=True,
                       timeout=300)
    return p.returncode, p.stdout + p.stderr


def reports(sidecar, run, kinds):
    rc, out, err = cli(sidecar, "--json", "incidents", run)
    assert rc == 0, err
    found = [i for i in json.loads(out) if i["kind"] in kinds]
    assert found, f"no {kinds} incident in {out}"
    return [json.loads(cli(sidecar, "--json", "report", run, str(i["id"]))[1]) for i in found]


def test_hallo_validationBug_reportNamesPatchedForwardAndRng(sidecar):
    # prevents: the Hallo validation bug reported without naming what validation did to the model
    run = f"hallo-validation-{os.getpid()}-{time.time_ns()}"
    rc, out = run_example(sidecar, "--bug", "validation", "--steps", "8", "--run", run)
    assert rc == 0, out
    r = reports(sidecar, run, {"VALIDATION_MUTATION"})[0]
    cause = r["likelyCauses"][0]
    assert cause["code"] == "VALIDATION_SIDE_EFFECT"
    assert "forward" in cause["title"] and "RNG" in cause["title"], cause
    assert "copy" in cause["fix"]


@pytest.mark.torch2  # fp16 matmul on the CPU
def test_hallo_fp16Bug_reportNamesMasterWeightsAndEpsUnderflow(sidecar):
    # prevents: the pure-fp16 AdamW bug reported as "NaN in imageproj" without the two real causes
    run = f"hallo-fp16-{os.getpid()}-{time.time_ns()}"
    rc, out = run_example(sidecar, "--bug", "fp16", "--steps", "5", "--preflight", "warn", "--run", run)
    assert rc == 3, out  # protect_update stopped it
    r = reports(sidecar, run, {"TENSOR_FORENSICS", "NON_FINITE_MODULE", "NON_FINITE_GRAD", "NON_FINITE_LOSS"})[0]
    codes = [c["code"] for c in r["likelyCauses"]]
    assert "FP16_WITHOUT_MASTER_WEIGHTS" in codes and "EPS_UNDERFLOW" in codes, codes
