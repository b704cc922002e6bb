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
