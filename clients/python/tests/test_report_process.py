"""Reports sent from a child process (report_process.py). Against the real sidecar: every step still
reaches it in order, a killed child is replaced without losing a report, the child never outlives
the trainer (killed, or with forked workers), a hung child is given up, and where no child can start
the reports go in-process. Against the Python stand-in (fake_sidecar.py), which can script a verdict
and hold a call: a HALT through the child, a child that dies mid-call."""
import logging
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
import torch

from trainguard import Action, TrainingHalted
from trainguard import report_process
from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
from trainguard.connection import in_words
from trainguard.guard import Guard
from trainguard.report_process import ReportCallError, ReportProcess
from fake_sidecar import FakeSidecar
from models import MLP, batch, weights_finite

pytestmark = pytest.mark.torch2  # the device gate on the CPU needs fused AdamW (torch >= 2.4)


def make_guard(target, run, **kw):
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    g = Guard(model, opt, f"{run}-{os.getpid()}", target=target, device_gate=True, report_process=True,
              deadline=5.0, **kw)
    return g, model, opt


def train(g, model, opt, steps, nan_at=()):
    verdicts = []
    for s in steps:
        x, y = batch(s)
        if s in nan_at:
            x = x.clone()
            x[0, 0] = float("nan")
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        verdicts.append(g.step(s, loss))
        g.optimizer_step()
        opt.zero_grad()
    return verdicts


def reported(g):
    return g.transport.call("GetRun", pb.GetRunRequest(run_id=g.run)).run.steps_reported


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def _noted(log, answer):
    log.append(answer is not None)
    return answer


def test_reports_go_through_a_child_process_and_reach_the_sidecar(sidecar):
    g, model, opt = make_guard(sidecar.target, "child-reports")
    answered_by_child = []  # per ReportStep call: did the child answer it (None: sent in-process)
    call = g.sender.process.call
    g.sender.process.call = lambda request, deadline: _noted(answered_by_child, call(request, deadline))
    train(g, model, opt, range(30), nan_at={12})
    assert g.flush(10)
    assert answered_by_child == [True] * 30
    child = g.sender.process.pid
    assert child is not None and child != os.getpid() and alive(child)
    assert reported(g) == 30
    assert g.counters["device_gated_steps"] == 30 and g.counters["skips"] == 1
    assert g.counters["sidecar_failures"] == 0
    assert weights_finite(model)
    g.close()
    assert not alive(child)  # closed with the guard


def test_a_halt_verdict_through_the_child_is_applied_at_the_next_step():
    fake = FakeSidecar(max_grad_norm=100.0, clip=1.0)
    fake.start()
    try:
        g, model, opt = make_guard(fake.target, "child-halt")
        fake.force[2] = pb.Action.Value("ACTION_HALT")  # for step 2, decided by the sidecar after the fact
        vs = train(g, model, opt, range(3))
        assert all(v.action == Action.APPLY and v.device_gated for v in vs)
        with pytest.raises(TrainingHalted):
            train(g, model, opt, [3])
        assert [r.step for r in fake.reports] == [0, 1, 2]
        assert g.sender.process.usable and g.sender.process.starts == 1  # the verdict came through the child
        g.close()
    finally:
        fake.stop()


def test_close_ends_a_child_still_starting_and_start_replaces_a_dead_one(sidecar, monkeypatch):
    # prevents: a replacement child (and its starting thread) outliving close() by up to START_S, or
    # start() reporting "no child" for good after the child died between calls
    proc = ReportProcess(sidecar.target)
    assert proc.start()
    first = proc.pid
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: proc._proc.poll() is not None, 5)
    assert proc.start() and proc.pid not in (None, first) and proc.starts == 2
    proc._stop(kill=True)  # as a call that found it hung would
    monkeypatch.setattr(report_process, "_BOOT", "import time; time.sleep(60); " + report_process._BOOT)
    assert proc.call(b"", 1.0) is None  # no child: started aside, the caller sends in-process
    assert wait_for(lambda: proc._spawning is not None, 10)
    starting, child = proc._starting, proc._spawning.pid
    proc.close()
    starting.join(10)
    assert not starting.is_alive() and wait_for(lambda: not alive(child), 5)
    assert proc.pid is None and proc.starts == 2


def test_a_killed_report_process_is_replaced_and_no_report_is_lost(sidecar):
    g, model, opt = make_guard(sidecar.target, "child-killed")
    train(g, model, opt, range(10))
    assert g.flush(10)
    first = g.sender.process.pid
    os.kill(first, signal.SIGKILL)
    assert wait_for(lambda: g.sender.process.pid is None, 5)  # gone, every thread of it
    train(g, model, opt, range(10, 20))  # the first report finds it dead and has a fresh one started
    assert g.flush(10)
    assert wait_for(lambda: g.sender.process.pid is not None)
    answered_by_child = []
    call = g.sender.process.call
    g.sender.process.call = lambda request, deadline: _noted(answered_by_child, call(request, deadline))
    train(g, model, opt, range(20, 25))
    assert g.flush(10)
    assert answered_by_child == [True] * 5
    assert g.sender.process.starts == 2 and g.sender.process.pid not in (None, first)
    assert (reported(g), g.counters["sidecar_failures"]) == (25, 0), g.counters
    g.close()


def test_no_report_waits_for_a_replacement_child_to_start(sidecar, monkeypatch):
    # prevents: the sender thread blocked while a new interpreter imports grpc (up to START_S), the
    # reports and the verdicts the training thread awaits held up behind it
    g, model, opt = make_guard(sidecar.target, "child-slow-restart")
    train(g, model, opt, range(5))
    assert g.flush(10)
    os.kill(g.sender.process.pid, signal.SIGKILL)
    assert wait_for(lambda: g.sender.process.pid is None, 5)
    monkeypatch.setattr(report_process, "_BOOT", "import time; time.sleep(60); " + report_process._BOOT)
    t0 = time.monotonic()
    vs = train(g, model, opt, range(5, 15))
    assert g.flush(10)
    assert time.monotonic() - t0 < report_process.ReportProcess.START_S / 2  # not one child start's wait
    assert all(v.action == Action.APPLY for v in vs)
    assert g.sender.process.starts == 1 and g.sender.process._starting is not None  # the new one is still starting
    assert (reported(g), g.counters["sidecar_failures"]) == (15, 0), g.counters  # sent in-process meanwhile
    g.close()


def test_a_report_in_flight_when_the_child_dies_counts_as_a_failed_call_and_the_next_goes_through():
    fake = FakeSidecar(max_grad_norm=100.0, clip=1.0)
    fake.start()
    try:
        g, model, opt = make_guard(fake.target, "child-dies-mid-call")
        train(g, model, opt, range(5))
        assert g.flush(10)
        first = g.sender.process.pid
        fake.delay = 2.0  # the next report stays in the child's call
        fake.in_call.clear()
        train(g, model, opt, [5])
        assert fake.in_call.wait(10)
        os.kill(first, signal.SIGKILL)
        fake.delay = 0.0
        train(g, model, opt, range(6, 10))  # step 6 waits for step 5's verdict: the call failed
        assert g.flush(10)
        assert g.counters["sidecar_failures"] == 1  # step 5's report, as an unanswered call would be
        assert wait_for(lambda: g.sender.process.starts == 2)
        assert [r.step for r in fake.reports if r.step >= 6] == [6, 7, 8, 9]
        assert weights_finite(model)
        g.close()
    finally:
        fake.stop()


def test_the_report_process_exits_when_the_trainer_is_killed(sidecar):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = {sys.path!r}
        from trainguard.report_process import ReportProcess
        from trainguard._proto.trainguard.v1 import trainguard_pb2 as pb
        proc = ReportProcess({sidecar.target!r})
        proc.start()
        try:
            proc.call(pb.ReportStepRequest(report=pb.StepReport(run_id="no-such-run")).SerializeToString(), 5.0)
        except Exception:
            pass  # the run does not exist: the child is up, which is all this needs
        print(proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_where_no_child_can_start_reports_are_sent_in_process(sidecar, monkeypatch, caplog):
    monkeypatch.setattr(report_process.sys, "executable", "/nonexistent/python3")
    with caplog.at_level(logging.WARNING, logger="trainguard"):  # the guard starts the child at once
        g, model, opt = make_guard(sidecar.target, "child-cannot-start")
        train(g, model, opt, range(8))
        assert g.flush(10)
    assert not g.sender.process.usable
    assert "reports are sent from the training process instead" in caplog.text
    assert reported(g) == 8 and g.counters["sidecar_failures"] == 0
    g.close()


def test_a_wrong_target_fails_as_unreachable_in_words(tmp_path):
    proc = ReportProcess("unix://" + str(tmp_path / "nothing.sock"))
    try:
        assert proc.start()
        with pytest.raises(ReportCallError) as e:
            proc.call(pb.ReportStepRequest(report=pb.StepReport(run_id="r")).SerializeToString(), 1.0)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing answered there" in in_words(e.value, 1.0)
        assert proc.usable  # the child runs; it is the sidecar that is not there
    finally:
        proc.close()


def test_auto_uses_a_child_on_the_cuda_device_gate_only(monkeypatch):
    monkeypatch.delenv("TRAINGUARD_REPORT_PROCESS", raising=False)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert report_process.wanted("auto", True, cuda) == (os.name == "posix")
    assert not report_process.wanted("auto", False, cuda) and not report_process.wanted("auto", True, cpu)
    assert report_process.wanted(True, False, cpu) and not report_process.wanted(False, True, cuda)
    monkeypatch.setenv("TRAINGUARD_REPORT_PROCESS", "0")
    assert not report_process.wanted("auto", True, cuda)
    with pytest.raises(ValueError, match="report_process must be"):
        Guard(MLP(), None, "bad-choice", target="unix:///nowhere.sock", report_process="yes")


def open_run(target, run):
    from trainguard.transport import Transport
    t = Transport(target)
    t.call("OpenRun", pb.OpenRunRequest(run_id=run, world_size=1, trainer_instance="t"), deadline=10)
    t.close()
    return pb.ReportStepRequest(report=pb.StepReport(run_id=run, step=0, loss=1.0)).SerializeToString()


def answered(proc, request):
    """Whether the child answers ``request``, once it is up (started, or restarted aside)."""
    if proc.pid is None:
        proc.start()
    return pb.ReportStepResponse.FromString(proc.call(request, 10.0)).verdict.step == 0


def test_a_hung_child_is_given_up_after_the_deadline_and_replaced(sidecar):
    request = open_run(sidecar.target, f"child-hung-{os.getpid()}")
    proc = ReportProcess(sidecar.target)
    proc.MARGIN_S = 0.5
    try:
        proc.start()
        hung = proc.pid
        os.kill(hung, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(ReportCallError) as e:
            proc.call(request, 0.2)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "did not answer" in e.value.details()
        assert time.monotonic() - t0 < 5
        assert not alive(hung)  # stopped, not left behind
        assert answered(proc, request) and proc.starts == 2
    finally:
        proc.close()


def test_pipes_above_fd_1024_work(sidecar):
    request = open_run(sidecar.target, f"child-fds-{os.getpid()}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    filler = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # a trainer with many files open
    proc = ReportProcess(sidecar.target)
    try:
        assert answered(proc, request)
        assert min(proc._proc.stdin.fileno(), proc._proc.stdout.fileno()) >= 1024
    finally:
        proc.close()
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_after_close_nothing_is_started_again(sidecar):
    request = open_run(sidecar.target, f"child-closed-{os.getpid()}")
    proc = ReportProcess(sidecar.target)
    assert answered(proc, request)
    child = proc.pid
    proc.close()
    assert not alive(child)
    assert proc.call(request, 1.0) is None  # nothing sent: the caller sends it itself
    assert proc.pid is None and proc.starts == 1


def test_what_the_child_interpreter_prints_never_reaches_the_answers(sidecar, tmp_path, monkeypatch):
    (tmp_path / "sitecustomize.py").write_text("print('noise on stdout ' * 50)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # imported by the child's interpreter at start-up
    request = open_run(sidecar.target, f"child-noise-{os.getpid()}")
    proc = ReportProcess(sidecar.target)
    try:
        assert answered(proc, request) and answered(proc, request)
    finally:
        proc.close()


def test_a_forked_worker_does_not_keep_the_child_alive(sidecar):
    proc = ReportProcess(sidecar.target)
    proc.start()
    child = proc.pid
    worker = os.fork()  # as a DataLoader worker would be
    if worker == 0:
        time.sleep(3)
        os._exit(0)
    try:
        popen = proc._proc
        proc.close()
        assert popen.returncode == 0  # it saw its stdin close and exited; it was not killed after a wait
        assert not alive(child)
    finally:
        os.kill(worker, signal.SIGKILL)
        os.waitpid(worker, 0)


def test_failed_restarts_after_a_working_child_send_in_process_and_lose_nothing(sidecar, monkeypatch):
    g, model, opt = make_guard(sidecar.target, "child-restarts-fail")
    train(g, model, opt, range(3))
    assert g.flush(10)
    monkeypatch.setattr(report_process.sys, "executable", "/nonexistent/python3")
    attempts = []
    popen = report_process.subprocess.Popen
    monkeypatch.setattr(report_process.subprocess, "Popen", lambda *a, **kw: attempts.append(1) or popen(*a, **kw))
    os.kill(g.sender.process.pid, signal.SIGKILL)
    assert wait_for(lambda: g.sender.process.pid is None, 5)
    step = 3
    while g.sender.process.usable and step < 200:  # each report that finds no child has one started aside
        train(g, model, opt, [step])
        assert g.flush(10)
        step += 1
    assert reported(g) == step and g.counters["sidecar_failures"] == 0
    assert not g.sender.process.usable and g.sender.process.starts == 1  # given up after three tries
    assert len(attempts) == report_process.ReportProcess.MAX_FAILED_STARTS
    g.close()


def test_a_loop_with_forked_dataloader_workers_trains_reports_and_closes_cleanly(sidecar):
    g, model, opt = make_guard(sidecar.target, "child-dataloader")
    xs = torch.cat([batch(s)[0] for s in range(12)])
    ys = torch.cat([batch(s)[1] for s in range(12)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, ys), batch_size=32, num_workers=2,
                                         multiprocessing_context="fork", persistent_workers=True)
    for step, (x, y) in enumerate(loader):  # the workers are forked after the child started
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        g.step(step, loss)
        g.optimizer_step()
        opt.zero_grad()
    assert g.flush(10)
    assert reported(g) == 12 and g.counters["sidecar_failures"] == 0
    popen = g.sender.process._proc
    g.close()  # the workers are still alive (persistent): they must not hold the child's stdin open
    assert popen.returncode == 0
    del loader
