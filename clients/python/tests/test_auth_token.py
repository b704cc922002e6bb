"""The client's token against a real sidecar configured with one (docs/deploy.md, issue #14)."""
import os

import grpc
import pytest

from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
from trainguard.sidecar import Sidecar, default_jar
from trainguard.transport import Transport

TOKEN = "py-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    jar = default_jar()
    if not os.path.exists(jar):
        pytest.fail(f"sidecar jar not found at {jar}: build it (./mvnw package) or set TRAINGUARD_JAR")
    work = tmp_path_factory.mktemp("auth")
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n")
    sc = Sidecar(jar=jar, workdir=str(work), extra_props={"trainguard.auth.token-file": str(token_file)})
    sc.start()
    yield sc, str(token_file)
    sc.kill()


def _open(t, run):
    return t.call("OpenRun", pb.OpenRunRequest(run_id=run, world_size=1, trainer_instance="t"), deadline=10)


# Prevents: a client that cannot pass the token, so a secured sidecar refuses every trainer call.
def test_transport_tokenFromArgumentEnvOrFile_writesAccepted(sidecar, monkeypatch):
    sc, token_file = sidecar
    monkeypatch.delenv("TRAINGUARD_TOKEN", raising=False)
    monkeypatch.setenv("TRAINGUARD_TOKEN_FILE", "/nonexistent")
    anonymous = Transport(sc.target)
    with pytest.raises(grpc.RpcError) as e:
        _open(anonymous, "py-auth-0")
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in e.value.details()
    _open(Transport(sc.target, token=TOKEN), "py-auth-1")
    monkeypatch.setenv("TRAINGUARD_TOKEN", TOKEN)
    _open(Transport(sc.target), "py-auth-2")
    monkeypatch.delenv("TRAINGUARD_TOKEN")
    monkeypatch.setenv("TRAINGUARD_TOKEN_FILE", token_file)
    _open(Transport(sc.target), "py-auth-3")


# Prevents: trainers in the pod needing a token on the Unix socket (file permissions guard it).
def test_transport_unixSocketWithoutToken_accepted(sidecar, monkeypatch):
    sc, _ = sidecar
    monkeypatch.delenv("TRAINGUARD_TOKEN", raising=False)
    monkeypatch.setenv("TRAINGUARD_TOKEN_FILE", "/nonexistent")
    _open(Transport(sc.unix_target), "py-auth-uds")


# Prevents: reports sent by the report process (report_process.py) going out without the token.
def test_report_process_carriesTheToken_reportsAccepted(sidecar, monkeypatch):
    from trainguard.report_process import ReportCallError, ReportProcess
    sc, _ = sidecar
    monkeypatch.delenv("TRAINGUARD_TOKEN", raising=False)
    monkeypatch.setenv("TRAINGUARD_TOKEN_FILE", "/nonexistent")
    _open(Transport(sc.target, token=TOKEN), "py-auth-child")
    request = pb.ReportStepRequest(report=pb.StepReport(run_id="py-auth-child", step=0, loss=1.0)).SerializeToString()
    anonymous = ReportProcess(sc.target)
    try:
        assert anonymous.start()
        with pytest.raises(ReportCallError) as e:
            anonymous.call(request, 10.0)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        anonymous.close()
    child = ReportProcess(sc.target, token=TOKEN)
    try:
        assert child.start()
        answer = pb.ReportStepResponse.FromString(child.call(request, 10.0))
        assert answer.verdict.step == 0
    finally:
        child.close()


def test_a_guard_without_the_token_says_once_in_words_that_the_sidecar_refused_it(sidecar, monkeypatch):
    # prevents: a missing token in fail-open mode leaving the run unrecorded behind "did not answer OpenRun:
    # the call failed with UNAUTHENTICATED" and a line per snapshot
    import warnings
    from models import make, train
    from trainguard.guard import Guard
    sc, _ = sidecar
    monkeypatch.delenv("TRAINGUARD_TOKEN", raising=False)
    monkeypatch.setenv("TRAINGUARD_TOKEN_FILE", "/nonexistent")
    model, opt = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = Guard(model, opt, "no-token", target=sc.target, deadline=2.0)
        train(g, model, opt, 4)
    loud = [str(w.message) for w in caught if "NOT PROTECTED" in str(w.message)]
    assert len(loud) == 1 and "refused the call's token" in loud[0] and "TRAINGUARD_TOKEN" in loud[0], loud


def test_the_management_port_or_an_http_url_as_target_is_said_for_what_it_is(sidecar):
    # prevents: the health/metrics port read as an old sidecar, an http:// URL as "nothing answered there"
    import warnings
    from models import make, train
    from trainguard.guard import Guard
    sc, _ = sidecar
    model, opt = make()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = Guard(model, opt, "management-port", target=f"127.0.0.1:{sc.management_port}", deadline=2.0)
        train(g, model, opt, 4)
    loud = [str(w.message) for w in caught if "NOT PROTECTED" in str(w.message)]
    assert len(loud) == 1 and "not a trainguard sidecar" in loud[0] and "management port" in loud[0], loud
    with pytest.raises(ValueError, match="is an HTTP URL: pass host:port"):
        Guard(model, opt, "http-url", target=f"http://127.0.0.1:{sc.port}/")


def test_the_cli_reads_the_token_file_the_client_reads(sidecar, monkeypatch, tmp_path):
    # prevents: `kubectl exec ... trainguard resume` in the trainer container (which the manifests give only
    # TRAINGUARD_TOKEN_FILE) refused with 401 "no credentials", while the client there read the file
    import subprocess
    import sys
    sc, token_file = sidecar
    _open(Transport(sc.target, token=TOKEN), "py-auth-cli")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
               TRAINGUARD_TOKEN_FILE=token_file)
    env.pop("TRAINGUARD_TOKEN", None)
    args = [sys.executable, "-m", "trainguard.cli", "--url", f"http://{sc.target}", "policy", "py-auth-cli",
            "--set", "maxConsecutiveSkips=9", "--reason", "token file"]
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    env["TRAINGUARD_TOKEN_FILE"] = str(tmp_path / "missing")
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode != 0 and "credentials" in (p.stdout + p.stderr), p.stdout + p.stderr
