"""Host time of BackwardGate._holds and BackwardGate._loop_clip (the checks step() runs on its critical
path, right after the loop's loss read, before it uses the measurement taken at backward's end): the
previous Python-loop versions against the current ones, on a 148-parameter model (GPT-2 small's
parameter count), interleaved round by round so that CPU frequency drift hits both alike. CPU only;
no sidecar. Prints microseconds per call (median and min over rounds) and checks that both versions
agree on every case (unchanged, one vouched write, a reassigned gradient, moved storage, a write too
many).

    OMP_NUM_THREADS=1 python bench/client/bench_backward_gate_holds.py [--rounds 30] [--calls 2000]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.environ.get("TRAINGUARD_CLIENT", os.path.join(HERE, "..", "..", "clients", "python")))

import torch  # noqa: E402

from trainguard import backward_gate as bg  # noqa: E402


OLD = "1dff98a"  # the commit before _holds ran in C loops


def old_backward_gate():
    """backward_gate.py as it was at OLD, from git, loaded into the trainguard package (its relative
    imports resolve there): the bench compares against the real old code, not a copy of it."""
    repo = os.path.join(HERE, "..", "..")
    src = subprocess.run(["git", "-C", repo, "show", f"{OLD}:clients/python/trainguard/backward_gate.py"],
                         check=True, capture_output=True, text=True).stdout
    mod = types.ModuleType(f"trainguard._backward_gate_{OLD}")
    mod.__package__ = "trainguard"
    exec(compile(src, f"backward_gate.py@{OLD}", "exec"), mod.__dict__)
    return mod


old_holds = old_backward_gate().BackwardGate._holds


def old_norm_read(early):
    """_loop_clip's read of the landed grad norm as it was."""
    hosts, _ = early.staged
    return float(hosts[0][1])


def new_norm_read(early):
    hosts, _ = early.staged
    return early.host_stats.item(1) if early.host_stats is not None else float(hosts[0][1])


def setup(n_params=148):
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(n_params // 2)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(torch.randn(4, 8)).square().mean()
    loss.backward()
    gate = bg.BackwardGate(types.SimpleNamespace(optimizer=opt))
    stats = torch.tensor([loss.item(), 3.5, 0.0, 1.0, 2.0, 0.5] + [0.0] * 30)  # [loss, grad norm, ...]
    early = bg.Early(1, [], [], 1.0, loss.detach(), bg._grads(opt), ([stats], None), None)
    return model, opt, gate, early, loss.detach()


def time_calls(fn, calls):
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - t0) / calls / 1e3


def interleaved(variants, rounds, calls):
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(time_calls(fn, calls))
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def reassign(params):
    params[7].grad = params[7].grad.clone()


def move_storage(params):
    params[9].grad.data = params[9].grad.clone()


def one_write(params):
    torch._foreach_mul_([p.grad for p in params], 1.0)  # what a loop's clip_grad_norm_ does to each


CASES = [  # (what happens after backward, whether the loop's clip write is vouched for, expected)
    ("unchanged", lambda params: None, False, True),
    ("one vouched write", one_write, True, True),
    ("a write too many", one_write, False, False),
    ("reassigned", reassign, False, False),
    ("moved storage", move_storage, False, False),
]


def check_agreement():
    """Both versions give the same, expected answer on every case the check exists for."""
    for label, change, clipped, expected in CASES:
        _, opt, gate, early, loss = setup()
        change(opt.param_groups[0]["params"])
        old = old_holds(gate, early, loss, 1.0, clipped)
        new = bg.BackwardGate._holds(gate, early, loss, 1.0, clipped)
        assert old == new == expected, (label, old, new, expected)
    _, _, _, early, _ = setup()
    assert old_norm_read(early) == new_norm_read(early) == 3.5
    return [label for label, *_ in CASES]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=2000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    checked = check_agreement()
    _, opt, gate, early, loss = setup()
    print(f"torch {torch.__version__}; {len(early.grads)} parameters; plain={early.plain}; one-call address "
          f"check={bg._PTRS_AT is not None}; both versions agree on: {', '.join(checked)}")
    res = interleaved({"old _holds": lambda: old_holds(gate, early, loss, 1.0, False),
                       "new _holds": lambda: bg.BackwardGate._holds(gate, early, loss, 1.0, False)},
                      a.rounds, a.calls)
    report("no write since backward", res)
    # the HF Trainer with max_grad_norm: its clip wrote each gradient once, vouched for (loop_clipped)
    torch._foreach_mul_([q.grad for q in opt.param_groups[0]["params"]], 1.0)
    res = interleaved({"old _holds": lambda: old_holds(gate, early, loss, 1.0, True),
                       "new _holds": lambda: bg.BackwardGate._holds(gate, early, loss, 1.0, True)},
                      a.rounds, a.calls)
    report("one clip write per gradient since backward", res)
    res = interleaved({"old norm read": lambda: old_norm_read(early), "new norm read": lambda: new_norm_read(early)},
                      a.rounds, a.calls * 10)
    report("_loop_clip's read of the landed grad norm", res)


def report(label, res):
    print(f"{label}:")
    for name, (median, best) in res.items():
        print(f"  {name:16s} median {median:8.2f} us/call   min {best:8.2f} us/call")
    (m_old, _), (m_new, _) = list(res.values())
    print(f"  -> {m_old / m_new:.1f}x less host time")


if __name__ == "__main__":
    main()
