"""Where the report thread's CPU goes in a launch-bound compiled loop: the guarded GPT-2 small loop
of overhead.py (compiled, batch 8, device gate, verdict_lag=1) for ``--steps`` steps, with the
sender thread's pieces timed on that thread (thread CPU and wall): the deferred build (the event
wait, the host copy read, the report built), the ReportStep call (made in this process, or by the
report process with TRAINGUARD_REPORT_PROCESS unset or 1), the answer applied; and the training
thread's CPU and context switches per step, to set beside the sender's CPU, with the training
thread's guard calls timed the same way (``main_*``: Guard.step, the graph path, optimizer_step,
the optimizer's own step, the recovery hooks). ``--unguarded``: the same loop without a guard.
``--kw JSON``: Guard options over the defaults (e.g. ``'{"snapshots": false}'``); ``--mute``: no
report built or sent; ``--cprofile``: cProfile of the guard's training-thread calls (Python 3.12's
cProfile sees every thread); ``--sample MS``: the training thread's CPU charged to its sampled stack
(coarse: sampling needs the GIL).

Usage: python sender_probe.py [--target unix:///tmp/tg.sock] [--steps 300] [--out FILE.json]
"""
import argparse
import json
import os
import sys
import threading
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
sys.path.insert(0, HERE)
from gpt_model import GPT, GPT2_SMALL  # noqa: E402
from trainguard.guard import Guard  # noqa: E402
from overhead_probes import mute  # noqa: E402


class ThreadPieces:
    """Thread CPU and wall seconds of wrapped calls, per label, on whichever thread runs them."""

    def __init__(self):
        self.acc = {}  # label -> [calls, cpu s, wall s]
        self.on = False

    def wrap(self, obj, attr, label):
        setattr(obj, attr, self.timed(getattr(obj, attr), label))

    def timed(self, fn, label):
        def timed_fn(*args, **kw):
            if not self.on:
                return fn(*args, **kw)
            c, w = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                a = self.acc.setdefault(label, [0, 0.0, 0.0])
                a[0] += 1
                a[1] += time.thread_time() - c
                a[2] += time.perf_counter() - w
        return timed_fn

    def per_step_us(self, steps):
        return {k: {"calls": n, "cpu_us": cpu / steps * 1e6, "wall_us": wall / steps * 1e6}
                for k, (n, cpu, wall) in self.acc.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="unix:///tmp/tg.sock")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--unguarded", action="store_true", help="the same loop without a guard (main thread only)")
    ap.add_argument("--kw", default="{}", help="JSON: Guard keyword arguments over the defaults, e.g. '{\"watch\": []}'")
    ap.add_argument("--mute", action="store_true", help="reports neither built nor sent (overhead_probes.mute)")
    ap.add_argument("--sample", type=float, default=0.0,
                    help="every SAMPLE ms, charge the training thread's CPU since the last sample to where it is")
    ap.add_argument("--cprofile", action="store_true", help="cProfile the guard's calls on the training thread")
    ap.add_argument("--ready-file", help="created after the warm-up, for a sampler to attach then (gil_profile.py)")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.unguarded and (a.mute or a.cprofile or a.kw != "{}"):
        raise SystemExit("--mute, --cprofile and --kw apply to the guard: not with --unguarded")
    dev = torch.device("cuda", 0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = GPT(**GPT2_SMALL).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    kw = dict(deadline=2.0, device_gate="auto", autocast_dtype=torch.bfloat16, watch="auto", verdict_lag=1)
    kw.update(json.loads(a.kw))
    g = None if a.unguarded else Guard(model, opt, f"sender-probe-{os.getpid()}", target=a.target, **kw)
    if g is not None and a.mute:
        mute(g)
    fwd = model if a.eager else torch.compile(model)
    pieces = ThreadPieces()
    pieces.wrap(opt, "step", "main_optimizer_step_inner")  # the optimizer's own step(), guarded or not
    if g is not None:
        instrument(g, pieces)
    prof = profile_guard_calls(g) if g is not None and a.cprofile else None
    data = [torch.randint(0, GPT2_SMALL["vocab"], (a.batch, GPT2_SMALL["seq"] + 1), device=dev) for _ in range(4)]
    data = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in data]

    def steps(n, start):
        for i in range(start, start + n):
            x, y = data[i % 4]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(x, y)
            loss.backward()
            if g is None:
                opt.step()
            else:
                g.step(i, loss)
                g.optimizer_step()
            opt.zero_grad(set_to_none=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        steps(20, 0)
        if g is not None:
            g.flush(10)
        torch.cuda.synchronize()
        if a.ready_file:
            open(a.ready_file, "w").close()
        sender = time.pthread_getcpuclockid(g.sender._thread.ident) if g is not None else None
        main_clock = time.pthread_getcpuclockid(threading.get_ident())
        s0 = time.clock_gettime(sender) if sender is not None else 0.0
        m0, t0, sched0 = time.clock_gettime(main_clock), time.perf_counter(), schedstat()
        pieces.on = True
        if prof is not None:
            prof.clear()  # the warm-up's calls out
        sampler = CpuSampler(threading.get_ident(), main_clock, a.sample / 1e3) if a.sample > 0 else None
        steps(a.steps, 20)
        launched = time.perf_counter()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        pieces.on = False
        where = sampler.stop(a.steps) if sampler is not None else None
        if prof is not None:
            prof.report()
        s1 = time.clock_gettime(sender) if sender is not None else 0.0
        m1, sched1 = time.clock_gettime(main_clock), schedstat()
        if g is not None:
            g.flush(10)
    res = {"torch": torch.__version__, "compiled": not a.eager, "guarded": g is not None, "batch": a.batch,
           "steps": a.steps, "step_ms": wall / a.steps * 1e3, "launch_ms": (launched - t0) / a.steps * 1e3,
           "main_cpu_us_per_step": (m1 - m0) / a.steps * 1e6,
           "main_runqueue_wait_us_per_step": (sched1[0] - sched0[0]) / 1e3 / a.steps,
           "main_switches_per_step": {k: (sched1[1][k] - sched0[1][k]) / a.steps for k in sched1[1]},
           "sender_cpu_us_per_step": (s1 - s0) / a.steps * 1e6, "pieces": pieces.per_step_us(a.steps),
           "gate_graph": dict(g.gated.graphs.counters) if g is not None else None,
           "kw": json.loads(a.kw), "mute": a.mute, "main_cpu_where_us_per_step": where}
    print(json.dumps(res, indent=1), flush=True)
    if g is not None:
        g.close()
    if a.out:
        with open(os.path.join(os.environ.get("OUT", "."), a.out), "w") as f:
            json.dump(res, f, indent=1)


class CpuSampler:
    """Charges the training thread's CPU time to where its Python stack is, sampled every ``period``
    seconds from a daemon thread: (line of the loop below, innermost trainguard function, innermost
    frame). Coarse (C time is charged to the Python frame that called it) and it takes the GIL."""

    def __init__(self, ident, clock, period):
        self.ident, self.clock, self.period = ident, clock, period
        self.acc, self.running = {}, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        last = time.clock_gettime(self.clock)
        while self.running:
            time.sleep(self.period)
            frame = sys._current_frames().get(self.ident)
            now = time.clock_gettime(self.clock)
            key = self._where(frame)
            self.acc[key] = self.acc.get(key, 0.0) + now - last
            last = now

    @staticmethod
    def _where(frame):
        inner = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}" if frame else "?"
        guard, loop = "-", "-"
        while frame is not None:
            name = frame.f_code.co_filename
            if guard == "-" and "trainguard" in name:
                guard = f"{os.path.basename(name)}:{frame.f_code.co_name}"
            if frame.f_code.co_name == "steps" and name.endswith("sender_probe.py"):
                loop = f"line {frame.f_lineno}"
            frame = frame.f_back
        return f"{loop} | {guard} | {inner}"

    def stop(self, steps):
        self.running = False
        self.thread.join()
        top = sorted(self.acc.items(), key=lambda kv: -kv[1])[:30]
        return {k: round(v / steps * 1e6, 1) for k, v in top}


def profile_guard_calls(g):
    """cProfile around Guard.step and Guard.optimizer_step only (the training thread's guard work)."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    for attr in ("step", "optimizer_step"):
        fn = getattr(g, attr)

        def profiled(*args, _fn=fn, **kw):
            prof.enable()
            try:
                return _fn(*args, **kw)
            finally:
                prof.disable()
        setattr(g, attr, profiled)

    def report():
        out = io.StringIO()
        st = pstats.Stats(prof, stream=out)
        st.sort_stats("tottime").print_stats(45)
        print(out.getvalue()[-9000:], flush=True)
    prof.report = report
    prof.clear()
    return prof


def schedstat():
    """The training thread's (run-queue wait ns, {voluntary, involuntary} context switches)."""
    tid = threading.get_native_id()
    with open(f"/proc/self/task/{tid}/schedstat") as f:
        wait = int(f.read().split()[1])
    switches = {}
    with open(f"/proc/self/task/{tid}/status") as f:
        for line in f:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                k, v = line.split(":")
                switches[k] = int(v)
    return wait, switches


def instrument(g, pieces):
    """Times the sender thread's pieces of ``g``."""
    pieces.wrap(g.sender, "_call", "report_call")  # the gRPC call, in this process or through the child
    pieces.wrap(g.sender, "_on_result", "on_result")
    pieces.wrap(g.gated, "_report", "report_logic_and_build")
    pieces.wrap(g.gated, "await_verdicts", "main_await_verdicts")
    pieces.wrap(g, "step", "main_guard_step")
    pieces.wrap(g, "optimizer_step", "main_guard_optimizer_step")
    pieces.wrap(g.gated.graphs, "measure_and_install", "main_measure_and_install")
    # its parts: the address walk (class-level: the table is built at the first capture), the inputs
    # loaded, the watch taken, the gate pointed
    from trainguard import grad_table
    pieces.wrap(grad_table.GradTable, "upload", "main_mi.upload")
    pieces.wrap(g.gated.graphs, "_load", "main_mi.load")
    pieces.wrap(g.gated.graphs.meter, "take_watch", "main_mi.take_watch")
    pieces.wrap(g.gated.graphs.gate, "point", "main_mi.gate_point")
    for attr in ("after_update", "_take", "before_update"):
        pieces.wrap(g.recovery, attr, f"main_recovery.{attr}")
    pieces.wrap(g.recovery.registrar, "register_ready", "main_registrar.register_ready")
    original_submit = g.sender.submit_deferred

    def submit_deferred(step, build, generation, hold=False):  # times the whole deferred build
        return original_submit(step, pieces.timed(build, "deferred_build"), generation, hold)
    g.sender.submit_deferred = submit_deferred


if __name__ == "__main__":
    main()
